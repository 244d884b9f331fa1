"""Uniform (linear) weight quantization: symmetric or asymmetric, per tensor or per channel.

``w ~ (code - zero_point) * scale`` with codes in ``[0, 2**bits)``.

* symmetric: restricted range ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` so +-max are both on the grid;
  ``scale = max|w| / (2**(b-1) - 1)``, ``zero_point = 2**(b-1)``. Needs ``bits >= 2``.
* asymmetric: ``[lo, hi] = [min(w, 0), max(w, 0)]`` (zero always inside the range),
  ``scale = (hi - lo) / (2**b - 1)``, ``zero_point = round(-lo / scale)``; ``bits = 1`` allowed
  (levels ``{0, scale}`` or ``{-scale, 0}``).

Zero is always exactly on the grid, so pruned weights stay exactly zero. Scales are computed in
float64 and clamped to a finite positive float32 (all-zero tensors get scale 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from slimkit.config import SlimConfig, check_int
from slimkit.errors import ConfigError
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.codes import QuantCodes
from slimkit.quantization.common import quantize_layers, reduce_dims, safe_scale


@dataclasses.dataclass(frozen=True)
class LinearQuantization(SlimConfig):
    """``sk.quantize_(model, LinearQuantization(bits=4, symmetric=True, per_channel=True))``."""

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = True
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        check_int("bits", self.bits, 1, 8)
        if self.symmetric and self.bits < 2:
            raise ConfigError(
                f"symmetric linear quantization needs bits in 2..8 (1 bit has no symmetric grid "
                f"that holds zero), but got {self.bits}; use symmetric=False for 1 bit"
            )


def linear_params(
    w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32), both broadcastable to ``w``: (out, 1, ..) or (1, ..)."""
    dims = reduce_dims(w, per_channel)
    w64 = w.double()
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = safe_scale(w64.abs().amax(dims, keepdim=True) / qmax)
        zp = torch.full_like(scale, 1 << (bits - 1), dtype=torch.int32)
        return scale, zp
    qmax = (1 << bits) - 1
    lo = w64.amin(dims, keepdim=True).clamp(max=0.0)
    hi = w64.amax(dims, keepdim=True).clamp(min=0.0)
    scale = safe_scale((hi - lo) / qmax)
    zp = torch.round(-lo / scale.double()).clamp(0, qmax).to(torch.int32)
    return scale, zp


def linear_encode(
    w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Codes ``clamp(round(w / scale) + zero_point)`` as int32."""
    q = torch.round(w.double() / scale.double()) + zp.double()
    lo = 1 if symmetric else 0  # restricted symmetric range keeps the grid symmetric
    return q.clamp(lo, (1 << bits) - 1).to(torch.int32)


def quantize_linear_tensor(
    w: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = True
) -> QuantCodes:
    """Codes, params and JSON info of one weight tensor (float32)."""
    scale, zp = linear_params(w, bits, symmetric, per_channel)
    info = {
        "scheme": "linear",
        "bits": bits,
        "symmetric": symmetric,
        "axis": 0 if per_channel else None,
    }
    codes = linear_encode(w, scale, zp, bits, symmetric)
    return QuantCodes(codes, bits, {"scale": scale, "zero_point": zp}, info)


@QUANTIZERS.register(LinearQuantization)
def _apply_linear(model: nn.Module, config: LinearQuantization, data: Any = None) -> nn.Module:
    del data  # data-free; accepted so pipelines can pass data= to every quantizer
    quantize_layers(
        model,
        config.targets,
        config.ignore,
        lambda _layer, w: quantize_linear_tensor(
            w, config.bits, config.symmetric, config.per_channel
        ),
    )
    return model
