"""Keep only a unit's outlier input channels in fp32 (LLM.int8()-style decomposition).

On all-MiniLM-L6-v2, the unit the int8 sensitivity scan keeps fp32 is layer 0's FFN output
projection, and after SmoothQuant its input has one outlier channel (absmax 4.9 against a
median of 0.64 over the corpus). Emulated held-out Spearman: 0.9948 all int8, 0.9963 with the
top 4 input channels fp32, 0.9964 with the whole unit fp32. So instead of a (B, T, 1536) x
(1536, 384) fp32 MatMul, the unit becomes

    y = linear(x * main_scale) + outlier(x[..., idx] * idx_scale)

where ``main_scale`` is the smoothing scale (or 1) with the ``idx`` channels zeroed, so the
main MatMul (quantized to int8 as before) no longer sees them, and ``outlier`` is a bias-free
(k -> out) fp32 Linear holding those weight columns; its ONNX MatMul is named ``.../outlier/...``
and excluded from quantization. Exact in fp32 (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OutlierSplitLinear(nn.Module):
    main_scale: torch.Tensor
    idx: torch.Tensor
    idx_scale: torch.Tensor

    def __init__(self, lin: Any, idx: torch.Tensor) -> None:
        super().__init__()
        inner: nn.Linear = lin.linear if hasattr(lin, "linear") else lin  # InputScaledLinear
        inv = getattr(lin, "inv_scale", None)
        if inv is None:
            inv = torch.ones(inner.in_features, dtype=inner.weight.dtype)
        idx = idx.to(torch.long).sort().values
        main_scale = inv.detach().clone()
        main_scale[idx] = 0.0
        self.main = inner
        self.register_buffer("main_scale", main_scale)
        self.register_buffer("idx", idx)
        self.register_buffer("idx_scale", inv.detach()[idx].clone())
        self.outlier = nn.Linear(len(idx), inner.out_features, bias=False)
        with torch.no_grad():
            self.outlier.weight.copy_(inner.weight[:, idx])  # (out, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., out); the main path's zeroed channels add nothing there
        return self.main(x * self.main_scale) + self.outlier(
            x.index_select(-1, self.idx) * self.idx_scale
        )


@torch.no_grad()
def outlier_channels(lin: Any, batches: list[dict], module: Any, k: int) -> torch.Tensor:
    """The ``k`` input channels of ``lin`` (inside ``module``) with the largest absmax of the
    scaled input ``x * inv_scale`` over ``batches``: (k,) indices."""
    seen: dict[str, torch.Tensor] = {}

    def hook(m, args, _out):
        x = args[0]
        inv = getattr(m, "inv_scale", None)
        if inv is not None:
            x = x * inv
        a = x.abs().flatten(0, -2).amax(0)  # (..., in) -> (in,)
        seen["a"] = torch.maximum(seen["a"], a) if "a" in seen else a

    h = lin.register_forward_hook(hook)
    try:
        for b in batches:
            module(b["input_ids"], b["attention_mask"])
    finally:
        h.remove()
    return seen["a"].topk(min(k, seen["a"].numel())).indices
