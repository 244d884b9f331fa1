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
