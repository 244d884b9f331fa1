"""Mixed precision: measured scan, budget met, sensitive layers get more bits, plan JSON."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.quantization import (
    MixedPlan,
    MixedPrecision,
    apply_mixed_plan,
    plan_mixed_precision,
    quantized_layers,
    weight_codes,
)
from slimkit.quantization.mixed import SensitivityMetric, allocate_bits


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        m[0].weight[:4].mul_(20.0)  # outlier rows: a per-tensor scale makes layer 0 sensitive
    return m


def test_budget_met_and_plan_saved(tmp_path):
    model = _model()
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    cfg = MixedPrecision(
        budget_bits_per_weight=4.0, candidates=(2, 4, 8), plan_path=str(tmp_path / "plan.json")
    )
    sk.quantize_(model, cfg, example_inputs=x)
    layers = quantized_layers(model)
    total = sum(m.weight.numel() * weight_codes(m).bits for m in layers.values())
    numel = sum(m.weight.numel() for m in layers.values())
    assert total <= 4.0 * numel
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert (
        saved["bits"]
        == model.slimkit_mixed_plan
        == {n: weight_codes(m).bits for n, m in layers.items()}
    )
    assert set(saved["sensitivity"]["0"]) == {"2", "4", "8"}
    plan = MixedPlan.from_dict(saved)
    assert plan.total_bits == total and plan.bits_per_weight <= 4.0
    # the scan is measured: more bits never hurts a layer by much
    for s in plan.sensitivity.values():
        assert s[8] > s[2]


def test_mixed_beats_uniform_at_same_budget():
    model = _model()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    ref = model(x).detach()
    cfg = MixedPrecision(
        budget_bits_per_weight=4.0, candidates=(2, 3, 4, 6, 8), symmetric=False, per_channel=False
    )
    mixed = sk.quantize_(_model(), cfg, example_inputs=x)
    uniform = sk.quantize_(
        _model(), sk.quantization.LinearQuantization(bits=4, symmetric=False, per_channel=False)
    )
    from slimkit.metrics.fidelity import sqnr_db

    # measured 14.2 dB vs 12.0 dB: the sensitive layer gets 6 bits, the big one 3
    assert sqnr_db(ref, mixed(x)) > sqnr_db(ref, uniform(x)) + 1.5
    assert mixed.slimkit_mixed_plan["0"] > mixed.slimkit_mixed_plan["2"]


def test_allocation_gives_sensitive_layer_more_bits():
    scan = {"a": {2: 10.0, 8: 40.0}, "b": {2: 30.0, 8: 45.0}}  # a suffers more at 2 bits
    bits = allocate_bits(scan, {"a": 100, "b": 100}, 1000, SensitivityMetric.OUTPUT_SQNR)
    assert bits == {"a": 8, "b": 2}
    with pytest.raises(ConfigError, match="below what the narrowest candidates need"):
        allocate_bits(scan, {"a": 100, "b": 100}, 300, SensitivityMetric.OUTPUT_SQNR)


def test_accuracy_and_weight_metrics_and_budget_bytes(digits):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    cfg = MixedPrecision(
        budget_bytes=20_000,
        candidates=(2, 4, 8),
        metric="accuracy",
        scheme="kmeans",
        calib_batches=1,
    )
    plan = plan_mixed_precision(model, cfg, data=digits)
    assert plan.total_bits <= 20_000 * 8 and plan.reference is not None
    apply_mixed_plan(model, plan, cfg)
    assert {weight_codes(m).info["scheme"] for m in quantized_layers(model).values()} == {"kmeans"}
    free = plan_mixed_precision(
        sk.build_model("lenet300", image_size=8),
        MixedPrecision(metric="weight_sqnr", scheme="log2", candidates=(2, 4)),
    )
    assert set(free.bits.values()) <= {2, 4}
    assert "mixed precision" in str(free.table().title)


def test_config_errors():
    with pytest.raises(ConfigError, match=r"scheme must be one of \['linear', 'log2', 'kmeans'\]"):
        MixedPrecision(scheme="int3")
    # one budget at most: both given used to drop the bits budget silently
    with pytest.raises(ConfigError, match=r"one budget.*=4.*budget_bytes=1000.*drop the other"):
        MixedPrecision(budget_bits_per_weight=4, budget_bytes=1000)
    # the default stays unset (4 bits/weight when used), so replacing the bytes budget works
    assert dataclasses.replace(MixedPrecision(), budget_bytes=1000).budget_bytes == 1000
    model = sk.build_model("lenet300", image_size=8)
    numel = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    plan = plan_mixed_precision(model, MixedPrecision(metric="weight_sqnr"))
    assert plan.budget_bits == 4 * numel
    assert MixedPrecision.from_dict(MixedPrecision(budget_bytes=9).to_dict()).budget_bytes == 9
    with pytest.raises(ConfigError, match="must be in 2..8, but got 1"):
        MixedPrecision(candidates=(1, 4))
    with pytest.raises(ConfigError, match="needs calibration inputs"):
        sk.quantize_(_model(), MixedPrecision())


def test_allocation_spends_leftover_budget():
    # big layer's step 4 -> 2 overshoots the budget; the fill pass widens the small layer back
    scan = {"big": {2: 10.0, 4: 20.0}, "small": {2: 5.0, 4: 20.0, 8: 40.0}}
    numel = {"big": 1000, "small": 100}
    bits = allocate_bits(scan, numel, 2 * 1000 + 8 * 100, SensitivityMetric.OUTPUT_SQNR)
    assert bits == {"big": 2, "small": 8}


def test_contract_lenet300():
    from slimkit.testing import check_contract, tiny_models

    model = tiny_models()["lenet300"]
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = MixedPrecision(budget_bits_per_weight=5.0, candidates=(4, 6, 8))
    r = check_contract(model, lambda m: sk.quantize_(m, cfg, example_inputs=x), x, min_sqnr_db=20.0)
    assert r.roundtrip_max_diff == 0.0
