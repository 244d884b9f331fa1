"""16-bit float weight storage (fp16 or bf16): the 16-bit baseline of every size comparison.

The weight is rounded to the half-precision value (round-to-nearest-even) and kept as float32,
so the model runs anywhere; its code is the 16-bit pattern (``weight_codes`` -> 0..65535).
Values beyond fp16's range (|w| > 65504) are refused: they would become inf.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch
from torch import nn

from slimkit.config import SlimConfig, parse_enum
from slimkit.errors import NumericsError
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.codes import QuantCodes
from slimkit.quantization.common import quantize_layers


class HalfDtype(str, enum.Enum):
    FP16 = "fp16"
    BF16 = "bf16"


_TORCH = {HalfDtype.FP16: torch.float16, HalfDtype.BF16: torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class HalfPrecision(SlimConfig):
    """``sk.quantize_(model, HalfPrecision(dtype="bf16"))``: store weights as fp16/bf16."""

    dtype: HalfDtype = HalfDtype.FP16
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        object.__setattr__(self, "dtype", parse_enum(HalfDtype, self.dtype, "dtype"))


@dataclasses.dataclass(frozen=True)
class Float16Weights(HalfPrecision):
    """fp16 weight storage (the ``fp16`` method name)."""


@dataclasses.dataclass(frozen=True)
class BFloat16Weights(HalfPrecision):
    """bf16 weight storage (the ``bf16`` method name)."""

    dtype: HalfDtype = HalfDtype.BF16


def quantize_half_tensor(layer: str, w: torch.Tensor, dtype: HalfDtype) -> QuantCodes:
    half = w.to(_TORCH[dtype])
    if not torch.isfinite(half).all():
        raise NumericsError(
            f"layer {layer!r}: weights up to {float(w.abs().max()):.3g} overflow {dtype.value} "
            "(max 65504); use bf16, which has float32's range, or ignore this layer"
        )
    codes = half.view(torch.int16).to(torch.int32) & 0xFFFF
    return QuantCodes(codes, 16, {}, {"scheme": dtype.value, "bits": 16})


@QUANTIZERS.register(HalfPrecision)
def _apply_half(model: nn.Module, config: HalfPrecision, data: Any = None) -> nn.Module:
    del data  # data-free; accepted so pipelines can pass data= to every quantizer
    quantize_layers(
        model,
        config.targets,
        config.ignore,
        lambda layer, w: quantize_half_tensor(layer, w, config.dtype),
    )
    return model
