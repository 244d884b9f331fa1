"""SVD of Linear layers: exactness at full rank, error falls with rank, rank rules, bad input."""

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.decomposition import RankSpec, SVDDecomposition, decomposition_plan, make_config
from slimkit.decomposition.rank import evbmf_rank
from slimkit.errors import ConfigError, NumericsError, TargetError
from slimkit.testing import check_contract, tiny_models


def _lenet300():
    torch.manual_seed(0)
    return sk.build_model("lenet300", image_size=8).eval()


def test_full_rank_reproduces_every_layer():
    model = _lenet300()
    x = torch.randn(8, 1, 8, 8)
    cfg = SVDDecomposition(rank=RankSpec("ratio", 1.0), skip_if_larger=False)
    r = check_contract(model, lambda m: sk.decompose_(m, cfg), x, max_abs_diff=1e-5)
    assert r.max_abs_diff <= 1e-5


def test_error_falls_as_rank_grows():
    layer = nn.Linear(64, 48)
    x = torch.randn(32, 64)
    errors = []
    for rank in (2, 8, 16, 32, 48):
        m = nn.Sequential(copy.deepcopy(layer))
        m.slimkit_arch = None
        sk.decompose_(m, SVDDecomposition(rank=rank, skip_if_larger=False))
        with torch.no_grad():
            errors.append(float((m(x) - layer(x)).norm() / layer(x).norm()))
        assert decomposition_plan(m)["0"]["rank"] == rank
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5


def test_energy_rule_keeps_fewest_components_reaching_threshold():
    model = _lenet300()
    sk.decompose_(model, SVDDecomposition.from_dict({"energy": 0.8, "skip_if_larger": False}))
    fresh = _lenet300()
    for name, row in decomposition_plan(model).items():
        s = torch.linalg.svdvals(getattr(fresh, name).weight.double())
        frac = torch.cumsum(s**2, 0) / (s**2).sum()
        r = row["rank"]
        assert frac[r - 1] >= 0.8 - 1e-12 and (r == 1 or frac[r - 2] < 0.8)
        assert row["rel_error"] <= (0.2**0.5) + 1e-9  # Eckart-Young: dropped energy <= 20%


def test_budget_rule_fits_the_parameter_budget():
    model = _lenet300()
    sk.decompose_(model, SVDDecomposition(rank=RankSpec("budget", 0.25)))
    for row in decomposition_plan(model).values():
        if row["applied"]:
            assert row["params_after"] <= 0.25 * row["params_before"]
    assert sum(p.numel() for p in model.parameters()) < 0.3 * sum(
        p.numel() for p in _lenet300().parameters()
    )


def test_layer_that_would_not_shrink_is_skipped():
    model = _lenet300()
    ref = copy.deepcopy(model)
    sk.decompose_(model, SVDDecomposition(rank=RankSpec("ratio", 0.9)))
    plan = decomposition_plan(model)
    # fc3 (10 x 100): rank 9 -> 9 * 110 + 10 = 1000 < 1010 shrinks; fc2 (100 x 300): 90 * 400 > 30,000
    assert not plan["fc2"]["applied"] and isinstance(model.fc2, nn.Linear)
    assert plan["fc2"]["reason"]
    assert torch.equal(model.fc2.weight, ref.fc2.weight)


def test_targets_and_ignore():
    model = _lenet300()
    sk.decompose_(
        model, SVDDecomposition(rank=RankSpec("ratio", 0.2), targets=["re:fc.*"], ignore=["fc3"])
    )
    assert isinstance(model.fc1, nn.Sequential) and isinstance(model.fc2, nn.Sequential)
    assert isinstance(model.fc3, nn.Linear)
    with pytest.raises(TargetError, match="fc1"):
        sk.decompose_(_lenet300(), SVDDecomposition(targets=["fc_1"]))


def test_bad_ranks_state_the_bounds():
    with pytest.raises(ConfigError, match="positive integer"):
        SVDDecomposition(rank=0)
    with pytest.raises(ConfigError, match=r"ratio must be in \(0.0, 1.0\]"):
        SVDDecomposition(rank=RankSpec("ratio", 1.5))
    with pytest.raises(ConfigError, match=r"must be in 1\.\.100 \(its full rank\), but got 101"):
        sk.decompose_(_lenet300(), SVDDecomposition(rank=101, targets=["fc2"]))
    with pytest.raises(ConfigError, match="exactly one rank rule"):
        make_config("svd", {"ratio": 0.5, "energy": 0.9})
    with pytest.raises(ConfigError, match="valid options"):
        make_config("svd", {"ratoi": 0.5})


def test_a_rank_too_large_for_a_later_layer_leaves_the_model_as_it_was():
    model = _lenet300()
    before = {n: type(m) for n, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    # fc1 and fc2 take rank 16; fc3 (full rank 10) does not: fc1 and fc2 stayed factorised
    with pytest.raises(ConfigError, match=r"layer 'fc3' must be in 1..10 .*ignore=\['fc3'\]"):
        sk.decompose_(model, SVDDecomposition(rank=16))
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert decomposition_plan(model) == {}
    sk.decompose_(model, SVDDecomposition(rank=16, ignore=["fc3"]))  # the fix the error gives
    assert set(decomposition_plan(model)) == {"fc1", "fc2"}


def test_data_that_is_not_a_bundle_of_these_images_is_refused_first():
    from torch.utils.data import DataLoader, TensorDataset

    model = _lenet300()
    loader = DataLoader(TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4).long()))
    with pytest.raises(ConfigError, match=r"needs a DataBundle as data"):
        sk.decompose_(model, SVDDecomposition(rank=4), data=loader)  # BN recalibration skipped
    mnist = sk.load_dataset("mnist5k", train_samples=64, test_samples=64)
    with pytest.raises(ConfigError, match=r"decompose_"):  # was a raw shape error, afterwards
        sk.decompose_(model, SVDDecomposition(rank=4), data=mnist)
    assert decomposition_plan(model) == {}


def test_nan_weights_are_refused():
    model = _lenet300()
    model.fc2.weight.data[0, 0] = float("nan")
    with pytest.raises(NumericsError, match="fc2"):
        sk.decompose_(model, SVDDecomposition())


def test_config_round_trips_through_dict():
    cfg = make_config("svd", {"energy": 0.95, "targets": ["fc1"], "recovery": {"mode": "finetune"}})
    assert cfg.to_dict()["rank"] == {"rule": "energy", "value": 0.95}
    assert SVDDecomposition.from_dict(cfg.to_dict()) == cfg


def test_recovery_needs_data():
    with pytest.raises(ConfigError, match="needs data"):
        sk.decompose_(_lenet300(), SVDDecomposition(recovery={"mode": "distill"}))


def test_evbmf_recovers_planted_rank():
    g = torch.Generator().manual_seed(0)
    for true in (3, 12):
        a = torch.randn(60, true, generator=g) @ torch.randn(true, 200, generator=g) * 0.5
        a += 0.3 * torch.randn(60, 200, generator=g)
        assert evbmf_rank(torch.linalg.svdvals(a.double()).numpy(), 60, 200) == true


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_every_zoo_model_survives_and_exports(name):
    model = tiny_models()[name]
    x = torch.randn(4, 1, 8, 8)
    cfg = SVDDecomposition(rank=RankSpec("energy", 0.999), skip_if_larger=False)
    # Dropped energy <= 0.1% per layer bounds the output error well above 20 dB on random inputs.
    r = check_contract(model, lambda m: sk.decompose_(m, cfg), x, min_sqnr_db=20.0)
    assert r.roundtrip_max_diff == 0.0


def test_plan_survives_save_and_load(tmp_path):
    model = _lenet300()
    sk.decompose_(model, SVDDecomposition(rank=RankSpec("ratio", 0.3)))
    sk.save(model, tmp_path / "m.safetensors")
    loaded = sk.load(tmp_path / "m.safetensors")
    assert decomposition_plan(loaded) == decomposition_plan(model)
    assert isinstance(loaded.fc1, nn.Sequential)


def test_pointwise_convs_are_factorised_and_larger_kernels_skipped():
    torch.manual_seed(0)
    model = sk.build_model("resnet", image_size=28).eval()  # shortcuts: 1x1, stride 2
    x = torch.randn(2, 1, 28, 28)
    cfg = SVDDecomposition(
        rank=RankSpec("ratio", 1.0), skip_if_larger=False, targets=["re:.*shortcut.*"]
    )
    check_contract(model, lambda m: sk.decompose_(m, cfg), x, max_abs_diff=1e-5, onnx=False)
    sk.decompose_(model, SVDDecomposition(rank=RankSpec("ratio", 0.25)))
    plan = decomposition_plan(model)
    first, second = model.layers[1].shortcut[0]
    assert first.stride == (2, 2) and first.out_channels == 4 and second.out_channels == 32
    assert plan["layers.1.shortcut.0"]["applied"]
    assert (
        "tucker or cp" in plan["layers.1.conv1"]["reason"] and not plan["layers.1.conv1"]["applied"]
    )
