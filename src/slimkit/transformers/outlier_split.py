"""Keep only a unit's outlier input channels in fp32 (LLM.int8()-style decomposition).

On all-MiniLM-L6-v2, the unit the int8 sensitivity scan keeps fp32 is layer 0's FFN output
projection: its input (GELU outputs) has a few outlier channels that stretch the per-tensor
dynamic int8 range of the whole activation. So instead of a (B, T, 1536) x (1536, 384) fp32
MatMul, the unit becomes

    y = main(x * mask) + outlier(x[..., idx])

where ``mask`` is 1 with the ``idx`` channels zeroed, so the main MatMul (int8 like the rest)
no longer sees them in its activation range, and its weight has those columns zeroed too, so
they do not set any output row's int8 weight scale either; ``outlier`` is a bias-free
(k -> out) fp32 Linear holding those weight columns; its ONNX MatMul is named ``.../outlier/...``
and excluded from quantization. A smoothed unit (InputScaledLinear) is un-smoothed here: with
the outliers split off, SmoothQuant's migration only made the weight columns uneven. Exact in
fp32 (tested).

Measured in ONNX Runtime on MiniLM (held-out Spearman vs fp32, k = 4): 0.9953 this way, 0.9945
keeping the smoothing and the outlier weight columns in the main path, 0.9955 with the whole
unit fp32, 0.9942 all int8; k = 1 and 16 gave the same 0.9953.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OutlierSplitLinear(nn.Module):
    mask: torch.Tensor
    idx: torch.Tensor

    def __init__(self, lin: Any, idx: torch.Tensor) -> None:
        super().__init__()
        inner: nn.Linear = lin.linear if hasattr(lin, "linear") else lin  # InputScaledLinear
        weight = inner.weight.detach()  # (out, in); W * s[None, :] when smoothed
        inv = getattr(lin, "inv_scale", None)
        if inv is not None:
            weight = weight * inv.detach()[None, :]  # undo the smoothing: back to W
        idx = idx.to(torch.long).sort().values
        mask = torch.ones(inner.in_features, dtype=weight.dtype)
        mask[idx] = 0.0
        self.main = nn.Linear(inner.in_features, inner.out_features, bias=inner.bias is not None)
        self.outlier = nn.Linear(len(idx), inner.out_features, bias=False)
        with torch.no_grad():
            # Zeroed columns keep the outliers out of each output row's int8 weight scale too.
            self.main.weight.copy_(weight * mask[None, :])
            if inner.bias is not None:
                self.main.bias.copy_(inner.bias.detach())
            self.outlier.weight.copy_(weight[:, idx])  # (out, k)
        self.register_buffer("mask", mask)
        self.register_buffer("idx", idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., out); the mask keeps the outliers out of the main path's int8 range
        return self.main(x * self.mask) + self.outlier(x.index_select(-1, self.idx))


@torch.no_grad()
def outlier_channels(lin: Any, batches: list[dict], module: Any, k: int) -> torch.Tensor:
    """The ``k`` input channels of ``lin`` (inside ``module``) with the largest absmax of its
    raw input ``x`` (before any smoothing scale) over ``batches``: (k,) indices."""
    seen: dict[str, torch.Tensor] = {}

    def hook(m, args, _out):
        a = args[0].abs().flatten(0, -2).amax(0)  # (..., in) -> (in,)
        seen["a"] = torch.maximum(seen["a"], a) if "a" in seen else a

    h = lin.register_forward_hook(hook)
    try:
        for b in batches:
            module(b["input_ids"], b["attention_mask"])
    finally:
        h.remove()
    return seen["a"].topk(min(k, seen["a"].numel())).indices
