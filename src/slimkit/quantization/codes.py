"""Integer codes of a weight-quantized layer, and the one dequantizer every scheme uses.

The shared convention (Quant-A defines it; the ``.slim`` writer and others consume it): after a
weight-only quantizer ran, a layer keeps a float32 ``weight`` whose values sit exactly on the
quantization grid, a JSON attribute

    module.slimkit_quant = {"weight": {"scheme": "linear", "bits": 4, "symmetric": True, ...}}

and buffers ``weight_scale``/``weight_zero_point`` (linear, log2 uses ``weight_scale`` only) or
``weight_codebook`` (kmeans). :func:`weight_codes` recovers the integer codes (values in
``[0, 2**bits)``) from those, and :func:`dequantize` maps codes back to floats. The quantizers
themselves build the stored weight with :func:`dequantize`, so the round trip is bit-exact by
construction; :func:`weight_codes` checks it and refuses a weight that left its grid (e.g. after
training without re-quantizing).

Code layout per scheme:

* ``linear``: ``w = (code - zero_point) * scale``; scale/zero point broadcast against the weight
  (per-tensor: all-ones shape; per-channel: ``(out, 1, ...)``). Symmetric uses the restricted
  range, so codes are in ``[1, 2**bits - 1]`` and ``zero_point = 2**(bits-1)``.
* ``log2``: top bit = sign, low ``bits-1`` bits = exponent ``e``; ``e == 0`` is exactly zero,
  otherwise ``|w| = scale * 2**-(e-1)`` where ``scale`` is the tensor's (or channel's) max |w|.
* ``kmeans``: ``w = codebook[code]``; ``codebook`` has ``2**bits`` entries (entry 0 is pinned
  at 0.0 when the layer had pruned weights).
* ``fp16`` / ``bf16``: the code is the 16-bit pattern of the half-precision value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, NumericsError

QUANT_ATTR = "slimkit_quant"
SCHEMES = ("linear", "log2", "kmeans", "fp16", "bf16")


@dataclasses.dataclass
class QuantCodes:
    """Integer codes of one quantized tensor plus what is needed to turn them back into floats."""

    codes: torch.Tensor  # int32, the weight's shape, values in [0, 2**bits)
    bits: int
    params: dict[str, torch.Tensor]  # "scale", "zero_point", "codebook", ... (float32 / int32)
    info: dict[str, Any]  # the JSON stored in module.slimkit_quant[name]

    @property
    def scheme(self) -> str:
        return str(self.info["scheme"])


# ---- dequantizers (the single source of truth for every scheme's float values) --------------


def _dequant_linear(c: QuantCodes) -> torch.Tensor:
    # (codes - zp) * scale, scale/zp broadcast: (1, ...) per tensor or (out, 1, ...) per channel.
    zp = c.params["zero_point"].to(torch.float32)
    return (c.codes.to(torch.float32) - zp) * c.params["scale"].to(torch.float32)


def log2_levels(scale: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """Magnitude of exponent code ``e`` (``e >= 1``): ``scale * 2**-(e-1)``; ``e == 0`` -> 0."""
    s, e = torch.broadcast_tensors(scale.to(torch.float32), exponents)
    mag = torch.ldexp(s.contiguous(), (1 - e).to(torch.int32))
    return torch.where(exponents == 0, torch.zeros_like(mag), mag)


def _dequant_log2(c: QuantCodes) -> torch.Tensor:
    half = 1 << (c.bits - 1)
    codes = c.codes.to(torch.int64)
    sign, exponent = codes >= half, codes % half
    mag = log2_levels(c.params["scale"], exponent)
    return torch.where(sign, -mag, mag)


def _dequant_kmeans(c: QuantCodes) -> torch.Tensor:
    # (k,) codebook indexed by codes of the weight's shape.
    return c.params["codebook"].to(torch.float32)[c.codes.to(torch.int64)]


_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _dequant_half(c: QuantCodes) -> torch.Tensor:
    signed = c.codes.to(torch.int32)
    signed = torch.where(signed >= 1 << 15, signed - (1 << 16), signed).to(torch.int16)
    return signed.view(_HALF[c.scheme]).to(torch.float32)


def dequantize(codes: QuantCodes) -> torch.Tensor:
    """Float32 values of ``codes`` (bit-exact with the layer's stored weight)."""
    scheme = codes.scheme
    if scheme == "linear":
        return _dequant_linear(codes)
    if scheme == "log2":
        return _dequant_log2(codes)
    if scheme == "kmeans":
        return _dequant_kmeans(codes)
    if scheme in _HALF:
        return _dequant_half(codes)
    raise ConfigError(f"quantization scheme must be one of {list(SCHEMES)}, but got {scheme!r}")


# ---- recovering codes from a module ---------------------------------------------------------


def _nearest_sorted(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index into ascending 1-D ``table`` of the entry nearest each value (ties -> lower)."""
    if table.numel() == 1:
        return torch.zeros_like(values, dtype=torch.int64)
    mids = (table[:-1] + table[1:]) / 2
    return torch.bucketize(values.contiguous(), mids.contiguous(), right=False)


def _codes_linear(
    w: torch.Tensor, info: dict[str, Any], p: dict[str, torch.Tensor]
) -> torch.Tensor:
    bits = int(info["bits"])
    q = torch.round(w.double() / p["scale"].double()) + p["zero_point"].double()
    return q.clamp(0, (1 << bits) - 1)


def log2_encode(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest sign+exponent code of each element of ``w`` (``scale`` broadcasts against it)."""
    half = 1 << (bits - 1)
    n_exp = half - 1  # exponent codes 1..n_exp are nonzero levels, 0 is exact zero
    mag = w.abs().to(torch.float32)
    s = scale.to(torch.float32).expand_as(w)
    # t = log2(scale / |w|): the level 2**-(e-1) nearest |w| has e - 1 in {floor(t), floor(t)+1}.
    t = torch.log2(s.double() / mag.double().clamp_min(1e-300))
    t = torch.nan_to_num(t, nan=0.0, posinf=float(n_exp + 1), neginf=0.0).clamp(0, n_exp + 1)
    e_lo = (torch.floor(t).to(torch.int64) + 1).clamp(1, n_exp)
    e_hi = (e_lo + 1).clamp(1, n_exp)
    zero = torch.zeros_like(e_lo)
    best, best_err = zero, mag.clone()  # error of coding as zero is |w|
    for cand in (e_hi, e_lo):  # e_lo last so a tie goes to the larger magnitude
        err = (log2_levels(s, cand) - mag).abs()
        take = err <= best_err
        best = torch.where(take, cand, best)
        best_err = torch.where(take, err, best_err)
    sign = (w < 0) & (best != 0)  # zero never carries a sign, so -0.0 is stored as +0.0
    return best + sign.to(torch.int64) * half


def _codes_log2(w: torch.Tensor, info: dict[str, Any], p: dict[str, torch.Tensor]) -> torch.Tensor:
    return log2_encode(w, p["scale"], int(info["bits"]))


def _codes_kmeans(
    w: torch.Tensor, info: dict[str, Any], p: dict[str, torch.Tensor]
) -> torch.Tensor:
    book = p["codebook"].to(torch.float32)
    sorted_book, order = torch.sort(book, stable=True)
    return order[_nearest_sorted(w.reshape(-1), sorted_book)].reshape(w.shape)


def _codes_half(w: torch.Tensor, info: dict[str, Any], p: dict[str, torch.Tensor]) -> torch.Tensor:
    bits16 = w.to(_HALF[info["scheme"]]).view(torch.int16).to(torch.int32)
    return bits16 & 0xFFFF


_PARAM_BUFFERS = {
    "linear": ("scale", "zero_point"),
    "log2": ("scale",),
    "kmeans": ("codebook",),
    "fp16": (),
    "bf16": (),
}


def quant_info(module: nn.Module, name: str = "weight") -> dict[str, Any] | None:
    """The JSON quantization record of ``module.<name>``, or None when it is not quantized."""
    record = getattr(module, QUANT_ATTR, None)
    if not isinstance(record, dict):
        return None
    info = record.get(name)
    return info if isinstance(info, dict) else None


def is_quantized(module: nn.Module, name: str = "weight") -> bool:
    return quant_info(module, name) is not None


def quantized_layers(model: nn.Module, name: str = "weight") -> dict[str, nn.Module]:
    """``{layer_name: module}`` of every layer whose ``name`` tensor is weight-quantized."""
    return {n: m for n, m in model.named_modules() if is_quantized(m, name)}


def weight_codes(module: nn.Module, name: str = "weight") -> QuantCodes:
    """Recover the integer codes of ``module.<name>``; dequantizing them reproduces it exactly."""
    result = nearest_codes(module, name)
    w = getattr(module, name).detach().cpu().to(torch.float32)
    if not torch.equal(dequantize(result).view(torch.int32), w.view(torch.int32)):
        bad = int((dequantize(result) != w).sum())
        raise NumericsError(
            f"{name} of this {type(module).__name__} has {bad} value(s) off its "
            f"{result.info['scheme']} {result.bits}-bit grid (was it trained or edited after "
            "quantization?); re-quantize the layer (sk.quantize_) before exporting codes"
        )
    return result


def nearest_codes(
    module: nn.Module, name: str = "weight", values: torch.Tensor | None = None
) -> QuantCodes:
    """The codes of the recorded grid's value nearest each element of ``values`` (default
    ``module.<name>``): exactly its codes when it is on the grid (see :func:`weight_codes`);
    for a weight that left it, the grid it should be on (for an error's deviation)."""
    info = quant_info(module, name)
    if info is None:
        raise ConfigError(
            f"{type(module).__name__}.{name} is not weight-quantized (no slimkit_quant record); "
            "run sk.quantize_(model, <weight-only config>) first"
        )
    scheme = info.get("scheme")
    if scheme not in _PARAM_BUFFERS:
        raise ConfigError(f"quantization scheme must be one of {list(SCHEMES)}, but got {scheme!r}")
    params: dict[str, torch.Tensor] = {}
    for key in _PARAM_BUFFERS[scheme]:
        buf = getattr(module, f"{name}_{key}", None)
        if not isinstance(buf, torch.Tensor):
            raise ConfigError(
                f"{scheme} quantized {name} needs buffer {name}_{key!s}, which is missing; "
                "the layer was edited after quantization, re-quantize it"
            )
        params[key] = buf.detach().cpu()
    w = getattr(module, name) if values is None else values
    w = w.detach().cpu().to(torch.float32)
    finder = {"linear": _codes_linear, "log2": _codes_log2, "kmeans": _codes_kmeans}
    raw = finder[scheme](w, info, params) if scheme in finder else _codes_half(w, info, params)
    return QuantCodes(raw.to(torch.int32), int(info["bits"]), params, dict(info))


def packed_bytes(module: nn.Module, name: str = "weight") -> int:
    """Bytes of ``module.<name>`` stored as packed codes plus its params (really packed)."""
    from slimkit.quantization.packing import pack

    c = weight_codes(module, name)
    packed = len(pack(c.codes.numpy(), c.bits))
    return packed + sum(t.numel() * t.element_size() for t in c.params.values())
