"""Parameter counts, nonzeros and bytes on disk (of a file actually written)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzeros(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a written artifact; a folder counts every file in it (ONNX external data)."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes the parameters and buffers take as dense float32 (the reference for ratios)."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return 4 * sum(t.numel() for t in tensors)
