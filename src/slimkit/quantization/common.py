"""Helpers shared by the weight-only quantizers: finiteness checks, attaching codes, reports.

A weight-only quantizer computes, per chosen layer, the codes' parameters (scale, codebook...)
and the codes, builds the float weight with :func:`slimkit.quantization.codes.dequantize` (so
the stored weight is bit-exactly what the codes say) and calls :func:`attach`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.config import select_modules
from slimkit.errors import NumericsError
from slimkit.metrics.fidelity import sqnr_db
from slimkit.quantization.codes import QUANT_ATTR, QuantCodes, dequantize

# Every buffer a weight-only scheme may own; stale ones are dropped when a layer is re-quantized.
PARAM_KEYS = ("scale", "zero_point", "codebook")
F32 = torch.finfo(torch.float32)


def weight_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` as a Tensor (typed access for Linear/Conv2d layers)."""
    w = getattr(module, name)
    assert isinstance(w, torch.Tensor), f"{type(module).__name__}.{name} is not a tensor"
    return w


def check_finite(layer: str, tensor: torch.Tensor, name: str = "weight") -> None:
    """Refuse NaN/inf weights, naming the layer."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericsError(
            f"layer {layer!r}: {name} holds {bad} NaN/inf value(s); quantization needs finite "
            "weights. Fix the training that produced them, or ignore this layer "
            f"(ignore=[{layer!r}])"
        )


def safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Float32 scale that is finite and positive: 0 (all-zero/constant-zero) -> 1, clamp range."""
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.clamp(F32.tiny, F32.max).to(torch.float32)


def reduce_dims(weight: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    """Dims reduced for a scale: all but the output channel (dim 0) per channel, else all."""
    return tuple(range(1, weight.ndim)) if per_channel else tuple(range(weight.ndim))


def attach(module: nn.Module, codes: QuantCodes, name: str = "weight") -> torch.Tensor:
    """Store ``codes`` on ``module``: grid weight, ``<name>_<param>`` buffers, JSON record."""
    values = dequantize(codes)
    if not torch.isfinite(values).all():  # pragma: no cover - guarded by safe_scale
        raise NumericsError(f"{codes.scheme} quantization produced non-finite {name} values")
    param = getattr(module, name)
    with torch.no_grad():
        param.copy_(values.to(param.dtype))
    for key in PARAM_KEYS:
        buf_name = f"{name}_{key}"
        if key in codes.params:
            if buf_name in module._buffers:
                del module._buffers[buf_name]
            module.register_buffer(buf_name, codes.params[key].detach().clone())
        elif buf_name in module._buffers:
            del module._buffers[buf_name]
    record = dict(getattr(module, QUANT_ATTR, None) or {})
    record[name] = dict(codes.info)
    setattr(module, QUANT_ATTR, record)
    return values


def quantize_layers(
    model: nn.Module,
    targets: Sequence[str],
    ignore: Sequence[str],
    encode: Callable[[str, torch.Tensor], QuantCodes],
) -> dict[str, QuantCodes]:
    """Run ``encode(layer_name, weight) -> QuantCodes`` on every chosen layer and attach it."""
    chosen = select_modules(model, targets, ignore)
    for layer, module in chosen.items():
        check_finite(layer, weight_of(module))
    out: dict[str, QuantCodes] = {}
    for layer, module in chosen.items():
        codes = encode(layer, weight_of(module).detach().cpu().to(torch.float32))
        attach(module, codes)
        out[layer] = codes
    return out


@dataclasses.dataclass(frozen=True)
class LayerQuantReport:
    """One row of a quantization report: measured on the layer's weights and packed codes."""

    layer: str
    scheme: str
    bits: int
    numel: int
    weight_sqnr_db: float
    float_bytes: int  # float32 bytes of the original weight
    packed_bytes: int  # bytes of pack(codes) + params, measured by packing

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def folded_reference(original: nn.Module, quantized: nn.Module) -> nn.Module:
    """``original`` with its BatchNorms folded, when ``quantized`` had them folded (now Identity).

    Static int8 and QAT fold every BatchNorm into its conv before quantizing
    (:func:`~slimkit.decomposition.fusion.fuse_batchnorm`), so their float weights are
    ``W * gamma / sqrt(var + eps)``; measured against the unfolded ``W``, the SQNR mixed that
    rescaling into the quantization error. Folded here by the same function, on a copy:
    ``original`` is left as it is, and returned as is when nothing was folded.
    """
    from slimkit.decomposition.fusion import fuse_batchnorm

    after = dict(quantized.named_modules())
    batchnorm = nn.modules.batchnorm._BatchNorm
    if not any(
        isinstance(m, batchnorm) and isinstance(after.get(n), nn.Identity)
        for n, m in original.named_modules()
    ):
        return original
    ref = copy.deepcopy(original).eval()
    fuse_batchnorm(ref)
    return ref


def layer_reports(original: nn.Module, quantized: nn.Module) -> list[LayerQuantReport]:
    """Weight SQNR and packed bytes of every quantized layer of ``quantized`` vs ``original``.

    The reference is ``original``'s float weight as the quantizer saw it, with the BatchNorms
    it folded folded in too (:func:`folded_reference`). So the SQNR is post-training
    quantization's error alone; after QAT it also holds what the training changed.
    """
    from slimkit.quantization.codes import packed_bytes, quant_info

    before = dict(folded_reference(original, quantized).named_modules())
    rows = []
    for layer, module in quantized.named_modules():
        info = quant_info(module)
        if info is None or layer not in before:
            continue
        ref = before[layer].weight.detach()
        w = module.weight.detach()
        rows.append(
            LayerQuantReport(
                layer=layer,
                scheme=str(info["scheme"]),
                bits=int(info["bits"]),
                numel=w.numel(),
                weight_sqnr_db=sqnr_db(ref, w),
                float_bytes=ref.numel() * 4,
                packed_bytes=packed_bytes(module),
            )
        )
    return rows
