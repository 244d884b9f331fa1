"""CP of Conv2d: the four-conv block computes its CP kernel, error falls with rank, bounds."""

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.decomposition import CPDecomposition, RankSpec, decomposition_plan
from slimkit.decomposition.cp import cp_weight, factorise_conv_cp
from slimkit.errors import ConfigError, TargetError
from slimkit.testing import check_contract, tiny_models


def _planted_conv(rank: int, seed: int = 0, stride: int = 1) -> nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=1)
    a = [torch.randn(n, rank, generator=g) for n in (8, 6, 3, 3)]
    conv.weight.data = torch.einsum("or,ir,hr,wr->oihw", *a)
    return conv


def test_block_structure_and_exact_recovery_of_a_planted_cp_kernel():
    for stride in (1, 2):
        conv = _planted_conv(3, stride=stride)
        block = factorise_conv_cp(conv, 3)
        assert [c.groups for c in block] == [1, 3, 3, 1]
        assert block[1].kernel_size == (3, 1) and block[2].kernel_size == (1, 3)
        x = torch.randn(2, 6, 9, 9)
        with torch.no_grad():
            ref, out = conv(x), block(x)
        assert out.shape == ref.shape
        assert float((out - ref).norm() / ref.norm()) < 1e-4
        w = conv.weight.double()
        with torch.no_grad():
            assert float((cp_weight(block) - w).norm() / w.norm()) < 1e-4


def test_error_falls_as_rank_grows():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    errors = []
    for rank in (2, 8, 24, 48):
        m = nn.Sequential(copy.deepcopy(conv))
        sk.decompose_(m, CPDecomposition(rank=rank, skip_if_larger=False))
        errors.append(decomposition_plan(m)["0"]["rel_error"])
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.2


def test_ratio_rule_scales_the_equal_params_rank_and_shrinks():
    model = sk.build_model("lenet5", image_size=8)
    cfg = CPDecomposition(rank=RankSpec("ratio", 0.25), targets=["conv2"], n_iter_max=5)
    sk.decompose_(model, cfg)
    row = decomposition_plan(model)["conv2"]
    # R_eq = 50*20*25 / (50 + 20 + 5 + 5) = 312.5 -> ceil(0.25 * 312.5) = 79
    assert row["rank"] == 79 and row["applied"]
    assert row["params_after"] == 79 * 80 + 50 < row["params_before"]


def test_rank_above_bound_is_an_error():
    with pytest.raises(ConfigError, match=r"1\.\.500.*got 501"):
        # bound = prod(50, 20, 5, 5) / 50 = 500
        sk.decompose_(sk.build_model("lenet5"), CPDecomposition(rank=501, targets=["conv2"]))


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_every_zoo_model_survives_and_exports(name):
    model = tiny_models()[name]
    x = torch.randn(2, 1, 8, 8)
    cfg = CPDecomposition(rank=RankSpec("ratio", 0.15), n_iter_max=20)
    if name == "lenet300":  # no Conv2d: finding nothing to factorise is an error, not a no-op
        with pytest.raises(TargetError, match="found no layer to decompose"):
            sk.decompose_(model, cfg)
        return
    r = check_contract(model, lambda m: sk.decompose_(m, cfg), x)
    assert r.onnx_max_diff is not None and r.onnx_max_diff <= 1e-4
