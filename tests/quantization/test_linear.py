"""Linear (uniform) weight quantization: SQNR bounds, error <= scale/2, exact zero, contract."""

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError, TargetError
from slimkit.metrics.fidelity import sqnr_db
from slimkit.quantization import LinearQuantization, dequantize, weight_codes
from slimkit.quantization.linear import quantize_linear_tensor
from slimkit.testing import check_contract, tiny_models


def test_int8_per_channel_sqnr_on_randn():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    c = quantize_linear_tensor(w, 8, symmetric=True, per_channel=True)
    assert sqnr_db(w, dequantize(c)) >= 35.0
    assert c.params["scale"].shape == (64, 1)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_roundtrip_error_at_most_half_scale(bits, symmetric, per_channel):
    if symmetric and bits == 1:
        pytest.skip("symmetric needs 2+ bits")
    torch.manual_seed(bits)
    w = torch.randn(8, 3, 3, 3) * 0.3 + 0.05
    c = quantize_linear_tensor(w, bits, symmetric, per_channel)
    err = (dequantize(c) - w).abs()
    bound = c.params["scale"].expand_as(w) / 2
    assert (err <= bound * (1 + 1e-6)).all()
    assert c.params["scale"].shape == ((8, 1, 1, 1) if per_channel else (1, 1, 1, 1))


def test_sqnr_grows_about_6db_per_bit():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    s = [sqnr_db(w, dequantize(quantize_linear_tensor(w, b))) for b in range(2, 9)]
    assert all(b > a + 4.5 for a, b in zip(s, s[1:]))


def test_asymmetric_beats_symmetric_on_shifted_weights():
    torch.manual_seed(0)
    w = torch.rand(16, 32)  # all positive: symmetric wastes half the grid
    sym = sqnr_db(w, dequantize(quantize_linear_tensor(w, 4, True, True)))
    asym = sqnr_db(w, dequantize(quantize_linear_tensor(w, 4, False, True)))
    assert asym > sym + 4.0


def test_pruned_zeros_stay_zero_and_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        model[0].weight[model[0].weight.abs() < 0.1] = 0.0
    zeros = model[0].weight == 0
    sk.quantize_(model, LinearQuantization(bits=3, symmetric=False, targets=["0"]))
    assert (model[0].weight[zeros] == 0).all()
    assert model[0].slimkit_quant["weight"] == {
        "scheme": "linear",
        "bits": 3,
        "symmetric": False,
        "axis": 0,
    }
    assert not hasattr(model[2], "slimkit_quant")
    assert weight_codes(model[0]).params["zero_point"].dtype == torch.int32


def test_config_errors():
    with pytest.raises(ConfigError, match="bits must be in 1..8, but got 12"):
        LinearQuantization(bits=12)
    with pytest.raises(ConfigError, match="symmetric linear quantization needs bits in 2..8"):
        LinearQuantization(bits=1)
    with pytest.raises(ConfigError, match="unknown option"):
        LinearQuantization.from_dict({"bitz": 4})
    with pytest.raises(TargetError, match="matches no Linear"):
        sk.quantize_(nn.Sequential(nn.Linear(2, 2)), LinearQuantization(targets=["1"]))


@pytest.mark.parametrize(
    ("model_name", "bits", "symmetric", "min_sqnr", "onnx"),
    [
        ("lenet300", 8, True, 35.0, True),
        ("resnet", 8, True, 45.0, False),
        ("lenet5", 4, False, 15.0, False),
        ("resnet", 4, True, 25.0, False),
    ],
)
def test_contract(model_name, bits, symmetric, min_sqnr, onnx):
    model = tiny_models()[model_name]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = LinearQuantization(bits=bits, symmetric=symmetric)
    r = check_contract(model, lambda m: sk.quantize_(m, cfg), x, min_sqnr_db=min_sqnr, onnx=onnx)
    assert r.roundtrip_max_diff == 0.0
