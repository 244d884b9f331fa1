"""Conv-BN / Linear-BN fusion: identical outputs (<= 1e-5), BN gone, save/load and ONNX exact."""

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.decomposition import FuseBatchNorm, fuse_batchnorm
from slimkit.decomposition.fusion import find_bn_pairs
from slimkit.testing import check_contract, randomize_batchnorm, tiny_models

MODELS = tiny_models(image_size=8)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fusion_contract_every_zoo_model(name):
    model = randomize_batchnorm(copy.deepcopy(MODELS[name]), seed=1).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # Every BatchNorm of the zoo follows a conv directly, so every one is folded.
    bns_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    res = check_contract(
        model, lambda m: sk.decompose_(m, FuseBatchNorm()), x, max_abs_diff=1e-5, onnx_atol=1e-4
    )
    assert res.max_abs_diff <= 1e-5
    assert len(find_bn_pairs(model)) == bns_before
    fused = sk.decompose_(copy.deepcopy(model), FuseBatchNorm())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


def test_linear_bn1d_and_untraceable_fallback():
    torch.manual_seed(0)

    class Branchy(nn.Module):  # data-dependent control flow: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU())

        def forward(self, x):
            return self.body(x) if x.sum() > -1e9 else x

    model = Branchy()
    randomize_batchnorm(model, seed=3)
    model.eval()
    x = torch.randn(7, 6)
    ref = model(x)
    pairs = fuse_batchnorm(model)
    assert pairs == [("body.0", "body.1")]
    assert isinstance(model.body[1], nn.Identity)
    assert (model(x) - ref).abs().max() <= 1e-5


def test_bn_with_two_users_is_not_fused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # conv output also used raw: folding would change it

    assert find_bn_pairs(Shared()) == []


def _no_running_stats_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6, track_running_stats=False),  # batch stats only
        nn.Conv2d(6, 4, 3),
        nn.BatchNorm2d(4),
    )
    with torch.no_grad():
        for bn in (net[1], net[3]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
        net[3].running_mean.uniform_(-1.0, 1.0)
        net[3].running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_batchnorm_without_running_stats_is_left_in_place_and_not_reported():
    # It normalizes with batch statistics in eval mode, so there is nothing to fold: it was
    # replaced by Identity anyway and reported as fused (outputs off by ~5).
    from slimkit.decomposition.fusion import fold_bn_into

    net = _no_running_stats_net()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = net(x)
    fused = copy.deepcopy(net)
    assert fuse_batchnorm(fused) == [("2", "3")]
    assert isinstance(fused[1], nn.BatchNorm2d) and isinstance(fused[3], nn.Identity)
    assert (fused(x) - ref).abs().max() < 1e-5
    layer = copy.deepcopy(net[0])
    assert fold_bn_into(layer, net[1]) is False
    assert torch.equal(layer.weight, net[0].weight)  # untouched
    via_api = sk.decompose_(copy.deepcopy(net), FuseBatchNorm())
    assert isinstance(via_api[1], nn.BatchNorm2d) and (via_api(x) - ref).abs().max() < 1e-5


def test_strict_fusion_refuses_before_changing_the_model():
    from slimkit.errors import ConfigError

    net = _no_running_stats_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match=r"BatchNorm '1' after '0' .*track_running_stats=False"):
        fuse_batchnorm(net, strict=True)
    assert isinstance(net[3], nn.BatchNorm2d)  # the foldable pair was not folded either
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
