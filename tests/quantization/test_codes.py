"""weight_codes/dequantize: bit-exact for every scheme, codes in range, edge-case tensors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError, NumericsError
from slimkit.quantization import (
    BFloat16Weights,
    Float16Weights,
    KMeansQuantization,
    LinearQuantization,
    Log2Quantization,
    dequantize,
    pack,
    quantized_layers,
    unpack,
    weight_codes,
)
from slimkit.quantization.codes import packed_bytes
from slimkit.quantization.linear import quantize_linear_tensor
from slimkit.quantization.log2 import quantize_log2_tensor

SCHEMES = {
    "linear8": LinearQuantization(bits=8),
    "linear3-asym": LinearQuantization(bits=3, symmetric=False, per_channel=False),
    "linear1-asym": LinearQuantization(bits=1, symmetric=False),
    "log2-4": Log2Quantization(bits=4),
    "log2-2-tensor": Log2Quantization(bits=2, per_channel=False),
    "kmeans4": KMeansQuantization(bits=4),
    "kmeans1": KMeansQuantization(bits=1),
    "fp16": Float16Weights(),
    "bf16": BFloat16Weights(),
}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_codes_roundtrip_bit_exact(name):
    model = sk.quantize_(_model(), SCHEMES[name])
    layers = quantized_layers(model)
    assert list(layers) == ["0", "3"]
    for module in layers.values():
        c = weight_codes(module)
        assert c.codes.shape == module.weight.shape and c.codes.dtype == torch.int32
        assert int(c.codes.min()) >= 0 and int(c.codes.max()) < 2**c.bits
        # bit-exact: compare raw float bits, not values
        assert torch.equal(dequantize(c).view(torch.int32), module.weight.view(torch.int32))
        # packed codes unpack to the same codes
        data = pack(c.codes.numpy(), c.bits)
        assert len(data) == math.ceil(c.codes.numel() * c.bits / 8)
        back = torch.from_numpy(unpack(data, c.bits, c.codes.numel()).astype("int64"))
        assert torch.equal(back.reshape(c.codes.shape), c.codes.long())
        assert packed_bytes(module) == len(data) + sum(
            t.numel() * t.element_size() for t in c.params.values()
        )


def test_weight_codes_refuses_off_grid_and_unquantized():
    model = sk.quantize_(_model(), LinearQuantization(bits=4))
    with torch.no_grad():
        model[3].weight[0, 0] += 1e-3
    with pytest.raises(NumericsError, match="off its linear 4-bit grid"):
        weight_codes(model[3])
    with pytest.raises(ConfigError, match="not weight-quantized"):
        weight_codes(nn.Linear(2, 2))


EDGE = {
    "zeros": torch.zeros(4, 6),
    "constant": torch.full((4, 6), 0.75),
    "negative-constant": torch.full((4, 6), -3.0),
    "denormal": torch.full((4, 6), 1e-40),
    "huge": torch.full((4, 6), 1e30) * torch.sign(torch.randn(4, 6)),
    "mixed-zero-rows": torch.cat([torch.zeros(2, 6), torch.randn(2, 6)]),
}


@pytest.mark.parametrize("case", sorted(EDGE))
@pytest.mark.parametrize(
    "cfg",
    [
        LinearQuantization(bits=8),
        LinearQuantization(bits=4, symmetric=False),
        LinearQuantization(bits=1, symmetric=False, per_channel=False),
        Log2Quantization(bits=4),
        KMeansQuantization(bits=2),
        BFloat16Weights(),
    ],
    ids=["lin8", "lin4a", "lin1a", "log2", "km2", "bf16"],
)
def test_edge_tensors_finite_scale_and_exact_zero(case, cfg):
    layer = nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(EDGE[case])
    w0 = layer.weight.detach().clone()
    model = sk.quantize_(nn.Sequential(layer), cfg)
    c = weight_codes(model[0])
    for t in c.params.values():
        assert torch.isfinite(t.float()).all()
    if "scale" in c.params:
        assert (c.params["scale"] > 0).all()
    w = model[0].weight
    assert torch.isfinite(w).all()
    assert (w[w0 == 0] == 0).all()  # zero stays exactly zero
    assert torch.equal(dequantize(c), w)
    if case == "constant" and not isinstance(cfg, BFloat16Weights):
        assert torch.allclose(w, w0)  # a constant is on every grid we build (its max)


def test_nan_inf_refused_naming_layer():
    model = _model()
    with torch.no_grad():
        model[3].weight[1, 2] = float("nan")
    for cfg in SCHEMES.values():
        with pytest.raises(NumericsError, match=r"layer '3'.*NaN/inf"):
            sk.quantize_(model, cfg)


@settings(max_examples=60, deadline=None)
@given(
    exponent=st.integers(-45, 37),
    bits=st.integers(1, 8),
    symmetric=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_scale_zero_point_always_finite(exponent, bits, symmetric, seed):
    if symmetric and bits == 1:
        return
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(3, 5, generator=g) * 10.0**exponent).float()
    w[0, 0] = 0.0
    c = quantize_linear_tensor(w, bits, symmetric, per_channel=True)
    assert torch.isfinite(c.params["scale"]).all() and (c.params["scale"] > 0).all()
    zp = c.params["zero_point"]
    assert int(zp.min()) >= 0 and int(zp.max()) < 2**bits
    v = dequantize(c)
    assert torch.isfinite(v).all() and float(v[0, 0]) == 0.0
    if bits >= 2:
        c2 = quantize_log2_tensor(w, bits)
        v2 = dequantize(c2)
        assert torch.isfinite(c2.params["scale"]).all() and float(v2[0, 0]) == 0.0
