"""BatchNorm statistics re-measured after decomposition: exact averages, nothing else touched."""

import copy

import torch
from torch import nn

import slimkit as sk
from slimkit.decomposition import Recovery, TuckerDecomposition
from slimkit.decomposition.bn_recalibration import recalibrate_batchnorm


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3))
    model[1].running_mean.fill_(5.0)  # stale statistics, far from the conv's outputs
    model[1].running_var.fill_(9.0)
    return model.eval()


def test_statistics_are_the_average_over_the_batches_and_params_unchanged():
    model = _conv_bn()
    params = copy.deepcopy(dict(model.named_parameters()))
    xs = [torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    used = recalibrate_batchnorm(model, [(x, torch.zeros(8)) for x in xs])
    assert used == 3
    with torch.no_grad():
        feats = [model[0](x).transpose(0, 1).flatten(1) for x in xs]  # (channels, N*H*W) each
    mean = torch.stack([f.mean(1) for f in feats]).mean(0)
    var = torch.stack([f.var(1, unbiased=True) for f in feats]).mean(0)  # BN keeps unbiased var
    bn = model[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-5)
    assert bn.momentum == 0.3 and not model.training  # momentum and eval mode restored
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name])


def test_empty_loader_keeps_the_old_statistics():
    model = _conv_bn()
    assert recalibrate_batchnorm(model, []) == 0
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0))
    assert torch.equal(model[1].running_var, torch.full((4,), 9.0))
    assert recalibrate_batchnorm(nn.Linear(2, 2), [(torch.ones(1, 2), None)]) == 0  # no BN


def test_decompose_with_data_remeasures_bn_unless_disabled(digits):
    torch.manual_seed(0)
    dense = sk.build_model("resnet", image_size=8, width=8)
    kept = copy.deepcopy(dense)
    sk.decompose_(
        kept,
        TuckerDecomposition(rank={"ratio": 0.5}, recovery=Recovery(recalibrate_bn=False)),
        data=digits,
    )
    assert torch.equal(kept.stem[1].running_mean, dense.stem[1].running_mean)
    fresh = copy.deepcopy(dense)
    sk.decompose_(fresh, TuckerDecomposition(rank={"ratio": 0.5}), data=digits)
    assert not torch.equal(fresh.stem[1].running_mean, dense.stem[1].running_mean)
    # The stem's BN now holds the average statistics of the decomposed stem on data.calib.
    with torch.no_grad():
        feats = [fresh.stem[0](x).transpose(0, 1).flatten(1) for x, _ in digits.calib]
    mean = torch.stack([f.mean(1) for f in feats]).mean(0)
    assert torch.allclose(fresh.stem[1].running_mean, mean, atol=1e-5)
