"""Power-of-two weight quantization: levels are +-max*2^-k, zero exact, SQNR bounds, contract."""

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.metrics.fidelity import sqnr_db
from slimkit.quantization import Log2Quantization, dequantize, weight_codes
from slimkit.quantization.log2 import quantize_log2_tensor
from slimkit.testing import check_contract, tiny_models


def test_values_are_signed_powers_of_two_of_the_max():
    torch.manual_seed(0)
    w = torch.randn(10, 20)
    w[0, :3] = 0.0
    c = quantize_log2_tensor(w, 4, per_channel=False)
    v = dequantize(c)
    amax = float(w.abs().max())
    nz = v[v != 0].abs() / amax
    k = -torch.log2(nz.double())
    assert torch.allclose(k, k.round(), atol=1e-9)  # exact powers of two times the max
    assert int(k.max()) <= 6 and int(k.min()) == 0  # 3 exponent bits: 7 octaves
    assert (v[0, :3] == 0).all()
    assert (torch.sign(v[v != 0]) == torch.sign(w[v != 0])).all()


def test_nearest_level_and_sqnr_bounds():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    s = {b: sqnr_db(w, dequantize(quantize_log2_tensor(w, b))) for b in range(2, 9)}
    assert s[4] >= 12.0 and s[8] >= 14.0  # octave spacing caps log2 near 15 dB
    assert all(s[b + 1] >= s[b] - 1e-9 for b in range(2, 8))
    # nearest level: error never exceeds half the gap to the next level (1/3 relative max)
    c = quantize_log2_tensor(w, 8)
    v = dequantize(c)
    big = w.abs() > w.abs().amax(1, keepdim=True) * 2.0**-100
    rel = ((v - w).abs() / w.abs())[big]
    assert float(rel.max()) <= 1 / 3 + 1e-6


def test_record_and_bits_range():
    model = sk.quantize_(nn.Sequential(nn.Linear(4, 3)), Log2Quantization(bits=3))
    assert model[0].slimkit_quant["weight"] == {"scheme": "log2", "bits": 3, "axis": 0}
    assert int(weight_codes(model[0]).codes.max()) < 8
    with pytest.raises(ConfigError, match="bits must be in 2..8, but got 1"):
        Log2Quantization(bits=1)


@pytest.mark.parametrize(
    ("model_name", "min_sqnr", "onnx"), [("lenet300", 5.0, True), ("resnet", 15.0, False)]
)
def test_contract(model_name, min_sqnr, onnx):
    model = tiny_models()[model_name]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    check_contract(
        model,
        lambda m: sk.quantize_(m, Log2Quantization(bits=5)),
        x,
        min_sqnr_db=min_sqnr,
        onnx=onnx,
    )
