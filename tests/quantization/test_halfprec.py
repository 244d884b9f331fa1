"""fp16/bf16 weight storage: values equal the half-precision cast, 16-bit codes, contract."""

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError, NumericsError
from slimkit.quantization import BFloat16Weights, Float16Weights, HalfPrecision, weight_codes
from slimkit.testing import check_contract, tiny_models


@pytest.mark.parametrize(
    ("cfg", "dtype"), [(Float16Weights(), torch.float16), (BFloat16Weights(), torch.bfloat16)]
)
def test_values_are_the_half_cast(cfg, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    w0 = model[0].weight.detach().clone()
    sk.quantize_(model, cfg)
    assert torch.equal(model[0].weight, w0.to(dtype).float())
    c = weight_codes(model[0])
    assert c.bits == 16 and int(c.codes.max()) < 2**16
    assert torch.equal(c.codes, w0.to(dtype).view(torch.int16).int() & 0xFFFF)


def test_fp16_overflow_refused_and_dtype_choice():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(1e6)
    with pytest.raises(NumericsError, match="overflow fp16"):
        sk.quantize_(nn.Sequential(layer), Float16Weights())
    sk.quantize_(nn.Sequential(layer), HalfPrecision(dtype="bf16"))  # bf16 has the range
    with pytest.raises(ConfigError, match=r"dtype must be one of \['fp16', 'bf16'\]"):
        HalfPrecision(dtype="fp8")


@pytest.mark.parametrize(("cfg", "min_sqnr"), [(Float16Weights(), 60.0), (BFloat16Weights(), 40.0)])
def test_contract(cfg, min_sqnr):
    model = tiny_models()["lenet300"]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    check_contract(model, lambda m: sk.quantize_(m, cfg), x, min_sqnr_db=min_sqnr)
