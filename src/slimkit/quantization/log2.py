"""Logarithmic (power-of-two) weight quantization: a sign bit plus an exponent code.

With ``bits = b`` the code's top bit is the sign and its low ``b - 1`` bits an exponent ``e``:
``e = 0`` is exactly zero, ``e >= 1`` means ``|w| = scale * 2**-(e-1)`` where ``scale`` is the
tensor's (or output channel's) max |w|. So 4 bits cover 7 octaves below the max, and a multiply
by a weight becomes a shift (times one float per tensor/channel). Each weight goes to the nearest
level in the linear domain; zero (pruned) weights stay exactly zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from slimkit.config import SlimConfig, check_int
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.codes import QuantCodes, log2_encode
from slimkit.quantization.common import quantize_layers, reduce_dims, safe_scale


@dataclasses.dataclass(frozen=True)
class Log2Quantization(SlimConfig):
    """``sk.quantize_(model, Log2Quantization(bits=4))``: sign + (bits-1)-bit exponent."""

    bits: int = 4
    per_channel: bool = True
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        check_int("bits", self.bits, 2, 8)


def quantize_log2_tensor(w: torch.Tensor, bits: int, per_channel: bool = True) -> QuantCodes:
    """Codes, params and JSON info of one weight tensor (float32)."""
    # scale: (out, 1, ...) per channel or (1, ...) per tensor; the max |w| is the top level.
    scale = safe_scale(w.abs().amax(reduce_dims(w, per_channel), keepdim=True).double())
    codes = log2_encode(w, scale, bits).to(torch.int32)
    info = {"scheme": "log2", "bits": bits, "axis": 0 if per_channel else None}
    return QuantCodes(codes, bits, {"scale": scale}, info)


@QUANTIZERS.register(Log2Quantization)
def _apply_log2(model: nn.Module, config: Log2Quantization, data: Any = None) -> nn.Module:
    del data  # data-free; accepted so pipelines can pass data= to every quantizer
    quantize_layers(
        model,
        config.targets,
        config.ignore,
        lambda _layer, w: quantize_log2_tensor(w, config.bits, config.per_channel),
    )
    return model
