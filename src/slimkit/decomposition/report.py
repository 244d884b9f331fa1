"""Before/after report of a decomposition: params, FLOPs, bytes on disk, ORT latency, accuracy.

Every figure comes from :func:`slimkit.metrics.evaluate`, which writes the model (safetensors and
ONNX) and times the ONNX file it wrote; nothing is estimated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass
class BeforeAfter:
    before: dict[str, Any]
    after: dict[str, Any]

    def ratios(self) -> dict[str, float]:
        """before / after for params, FLOPs, bytes and ORT latency (higher is better)."""
        out = {}
        for key in ("params", "flops", "bytes_safetensors", "bytes_onnx", "ort_ms"):
            b, a = self.before.get(key), self.after.get(key)
            if b is not None and a:
                out[key] = b / a
        return out

    def rows(self) -> list[list[object]]:
        keys = ["params", "flops", "bytes_safetensors", "bytes_onnx", "ort_ms", "accuracy"]
        ratios = self.ratios()
        return [
            [k, self.before.get(k), self.after.get(k), f"{ratios[k]:.2f}x" if k in ratios else "-"]
            for k in keys
            if self.before.get(k) is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "ratios": self.ratios()}


def measure(
    model: nn.Module, example: torch.Tensor, data: Any = None, *, runs: int = 30, threads: int = 1
) -> dict[str, Any]:
    """One measured row: params, FLOPs, bytes (safetensors, ONNX), ORT ms at batch 1, accuracy."""
    from slimkit.metrics import evaluate

    m = evaluate(
        model,
        data,
        example_input=example[:1],
        batches=(1,),
        runners=("ort",),
        threads=threads,
        runs=runs,
    )
    return {
        "params": m.params,
        "flops": m.flops,
        "bytes_safetensors": m.bytes_safetensors,
        "bytes_onnx": m.bytes_onnx,
        "ort_ms": m.latency_ms("ort", 1),
        "accuracy": m.accuracy,
    }


def before_after(
    before: nn.Module, after: nn.Module, example: torch.Tensor, data: Any = None, **kwargs: Any
) -> BeforeAfter:
    """Measure the model before and after a decomposition the same way, side by side."""
    return BeforeAfter(
        measure(before, example, data, **kwargs), measure(after, example, data, **kwargs)
    )
