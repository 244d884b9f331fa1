"""Tucker-2 of Conv2d through tensorly: exact at full rank, error falls with rank, rules, bounds."""

import copy

import pytest
import tensorly as tl
import torch
from torch import nn

import slimkit as sk
from slimkit.decomposition import RankSpec, TuckerDecomposition, decomposition_plan
from slimkit.errors import ConfigError, TargetError
from slimkit.testing import check_contract, randomize_batchnorm, tiny_models


def _resnet():
    torch.manual_seed(0)
    return randomize_batchnorm(sk.build_model("resnet", image_size=8).eval())


def test_full_rank_reproduces_the_model():
    x = torch.randn(4, 1, 8, 8)
    cfg = TuckerDecomposition(rank=RankSpec("ratio", 1.0), skip_if_larger=False)
    check_contract(_resnet(), lambda m: sk.decompose_(m, cfg), x, max_abs_diff=1e-4)


def test_replacement_is_three_plain_convs_with_original_geometry():
    model = _resnet()
    sk.decompose_(
        model, TuckerDecomposition(rank=RankSpec("ratio", 0.5), targets=["layers.1.conv1"])
    )
    block = model.layers[1].conv1
    assert [type(c) for c in block] == [nn.Conv2d] * 3
    assert block[0].kernel_size == (1, 1) and block[2].kernel_size == (1, 1)
    assert block[1].kernel_size == (3, 3) and block[1].padding == (1, 1)
    assert (block[0].out_channels, block[1].out_channels) == (
        8,
        16,
    )  # ceil(0.5 * 16), ceil(0.5 * 32)
    assert decomposition_plan(model)["layers.1.conv1"]["rank"] == [16, 8]


def test_error_falls_as_rank_grows():
    torch.manual_seed(1)
    conv = nn.Conv2d(24, 32, 3, padding=1)
    x = torch.randn(4, 24, 8, 8)
    errors = []
    for ratio in (0.125, 0.25, 0.5, 0.75, 1.0):
        m = nn.Sequential(copy.deepcopy(conv))
        sk.decompose_(m, TuckerDecomposition(rank=RankSpec("ratio", ratio), skip_if_larger=False))
        with torch.no_grad():
            errors.append(float((m(x) - conv(x)).norm() / conv(x).norm()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5


def test_energy_and_vbmf_rules_choose_per_mode_ranks():
    model = _resnet()
    sk.decompose_(model, TuckerDecomposition(rank=RankSpec("energy", 0.95), skip_if_larger=False))
    for row in decomposition_plan(model).values():
        if row["applied"]:
            r_out, r_in = row["rank"]
            assert 1 <= r_out <= row["shape"][0] and 1 <= r_in <= row["shape"][1]
    # A kernel with planted channel ranks (4, 3) plus small noise: VBMF finds them.
    g = torch.Generator().manual_seed(0)
    core = torch.randn(4, 3, 3, 3, generator=g)
    u_out, u_in = torch.randn(40, 4, generator=g), torch.randn(30, 3, generator=g)
    conv = nn.Conv2d(30, 40, 3)
    conv.weight.data = torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in) + 0.01 * torch.randn(
        40, 30, 3, 3, generator=g
    )
    m = nn.Sequential(conv)
    sk.decompose_(m, TuckerDecomposition.from_dict({"vbmf": True}))
    assert decomposition_plan(m)["0"]["rank"] == [4, 3]
    assert decomposition_plan(m)["0"]["rel_error"] < 0.05


def test_budget_rule_fits():
    model = _resnet()
    sk.decompose_(model, TuckerDecomposition(rank=RankSpec("budget", 0.3)))
    for row in decomposition_plan(model).values():
        if row["applied"]:
            assert row["params_after"] <= 0.3 * row["params_before"] + 1


def test_rank_bounds_are_errors_naming_the_mode():
    with pytest.raises(ConfigError, match=r"input-channel mode.*1\.\.16.*got 20"):
        sk.decompose_(_resnet(), TuckerDecomposition(rank=20, targets=["layers.1.conv1"]))
    with pytest.raises(ConfigError, match="positive integer"):
        TuckerDecomposition(rank=-3)


def test_grouped_and_pointwise_convs_are_skipped_with_a_reason():
    model = sk.build_model("mobilenetv2", image_size=8)
    sk.decompose_(model, TuckerDecomposition())
    plan = decomposition_plan(model)
    assert "grouped" in plan["features.0.conv.0"]["reason"]
    assert "1x1" in plan["head.0"]["reason"]


def test_tensorly_backend_is_restored():
    before = tl.get_backend()
    sk.decompose_(_resnet(), TuckerDecomposition(targets=["layers.0.conv1"], skip_if_larger=False))
    assert tl.get_backend() == before


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_every_zoo_model_survives_and_exports(name):
    model = randomize_batchnorm(tiny_models()[name])
    x = torch.randn(4, 1, 8, 8)
    cfg = TuckerDecomposition(rank=RankSpec("energy", 0.999), skip_if_larger=False)
    if name == "lenet300":  # no Conv2d: finding nothing to factorise is an error, not a no-op
        with pytest.raises(TargetError, match="found no layer to decompose"):
            sk.decompose_(model, cfg)
        return
    check_contract(model, lambda m: sk.decompose_(m, cfg), x, min_sqnr_db=20.0)


def test_the_nothing_to_decompose_refusal_names_no_cli_flag():
    # raised from decompose_ and recipes as well as the CLI, it named the CLI's "--method svd"
    with pytest.raises(TargetError, match="found no layer to decompose") as info:
        sk.decompose_(tiny_models()["lenet300"], TuckerDecomposition())
    assert "SVDDecomposition (method svd)" in str(info.value)
    assert "--" not in str(info.value)
