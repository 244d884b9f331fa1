"""Per-token int8 ranges for a Linear whose input ORT quantizes per tensor.

ONNX Runtime's dynamic int8 (DynamicQuantizeMatMul) quantizes a MatMul's whole input with one
range, so the largest token sets the step for every token. In all-MiniLM-L6-v2 that token is
[CLS]: the FFN inputs of layers 0-3 reach |x| 22-30 on [CLS] against at most 7-13 on any other
token (the 99th percentile of the other tokens' maxima is 5-12), so the ordinary tokens get a
third to a quarter of the int8 levels they could have. ``TokenScaledLinear`` divides each token
(row) by its own absolute maximum before the MatMul and multiplies the result back:

    r = max_j |x[..., j]| + eps               (..., 1)
    y = ((x / r) @ W^T) * r + b              exact in fp32 (row scaling commutes with @ W^T)

so the per-tensor int8 range of ``x / r`` is about [-1, 1] and every token gets its own step:
per-token dynamic quantization, as in ZeroQuant or LLM.int8(), built from standard ONNX ops
(Abs, ReduceMax, Add, Div before the MatMul; Mul, Add after), because ORT's int8 MatMul kernels
take a single input scale. The bias moves after the row rescale, so it is added once, unscaled.

Measured on MiniLM in ONNX Runtime (held-out Spearman vs fp32; FFN in and out of every layer):
0.9955 -> 0.9972 with the default recipe, 0.9940 -> 0.9969 with no fp32 unit, and 0.9683 ->
0.9711 on a student with 30 % of FFN neurons pruned (fp32 0.9743). The cost is ~5 more small ops
per unit: at batch 1 (~15 tokens) 1.19 -> 1.43 ms (+20 %), at batch 32 23.8 -> 25.5 ms (+7 %),
2 threads, interleaved rounds. Hence off by default (``EncoderInt8.per_token``), and when on,
only the units that gain most are wrapped (``EncoderInt8.per_token_share``, chosen by an
emulated scan: on MiniLM the FFN outputs of layers 0-3 give ~85 % of it). With static
int8 the calibrated range of ``x / r`` is simply [-1, 1], so static becomes per-token too: held-out
Spearman 0.9245 -> 0.9895 with no fp32 unit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Added to each row's absolute maximum: an all-zero row divides by this instead of by zero
# (and stays zero). Far below any real activation scale.
EPS = 1e-12


def row_scaled_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    quantize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(quantize(x / r) @ W^T) * r + bias`` with r the per-row absmax + EPS: (..., in) ->
    (..., out). The one definition of the arithmetic, shared by :class:`TokenScaledLinear`
    (``quantize`` None, exact) and the int8 sensitivity scan's emulation (ORT's per-tensor
    int8 of ``x / r``), so the scan measures what the export computes."""
    r = x.abs().amax(-1, keepdim=True) + EPS  # (..., 1)
    a = x / r
    y = F.linear(a if quantize is None else quantize(a), weight) * r
    return y if bias is None else y + bias


class TokenScaledLinear(nn.Module):
    """``lin(x)`` computed as ``(lin_nobias(x / r)) * r + bias`` with r the per-row absmax.

    ``lin`` is an ``nn.Linear`` or a smoothed ``InputScaledLinear`` (its ``inv_scale`` applies
    first, so SmoothQuant's per-channel migration and the per-token range combine). Children
    keep their names (``linear``), so ONNX scopes and unit lookups stay as they were.
    """

    inv_scale: torch.Tensor | None

    def __init__(self, lin: Any) -> None:
        super().__init__()
        self.linear: nn.Linear = lin.linear if hasattr(lin, "linear") else lin
        inv = getattr(lin, "inv_scale", None)
        self.register_buffer("inv_scale", None if inv is None else inv.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., in) -> (..., out)
        if self.inv_scale is not None:
            x = x * self.inv_scale
        return row_scaled_linear(x, self.linear.weight, self.linear.bias)
