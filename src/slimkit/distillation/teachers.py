"""Teachers: a PyTorch module (zoo, pruned or quantized slimkit model) or an ONNX Runtime session.

Both run in inference mode without gradients and return logits ``(B, classes)`` as float32
torch tensors. Only a :class:`TorchTeacher` exposes its modules, so feature losses (hints,
layer-wise, attention) need one; an :class:`OnnxTeacher` serves logit KD.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import ConfigError


class Teacher:
    """Base: ``teacher(x) -> logits`` with no gradients; ``module`` is None when opaque."""

    module: nn.Module | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Give back anything borrowed (e.g. restore the module's train/eval mode)."""


class TorchTeacher(Teacher):
    """A PyTorch teacher, run in eval mode under ``torch.no_grad``."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"TorchTeacher needs an nn.Module, but got {type(module).__name__}")
        self.module = module
        self._was_training = module.training
        module.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        if self.module.training:  # someone switched it back; the teacher is never trained here
            self.module.eval()
        return self.module(x).float()

    def close(self) -> None:
        if self.module is not None:
            self.module.train(self._was_training)


class OnnxTeacher(Teacher):
    """An ONNX model run by ONNX Runtime (checker + external-data checks via ``make_session``)."""

    def __init__(self, source: bytes | str | os.PathLike[str] | Any, *, threads: int = 1) -> None:
        if isinstance(source, (bytes, str, os.PathLike)):
            from slimkit.export.ort import make_session

            if not isinstance(source, bytes) and not Path(source).exists():
                raise ConfigError(f"ONNX teacher file {str(source)!r} does not exist")
            self.session = make_session(source, threads=threads)
        elif hasattr(source, "run") and hasattr(source, "get_inputs"):
            self.session = source  # an onnxruntime.InferenceSession built by the caller
        else:
            raise ConfigError(
                f"OnnxTeacher needs an .onnx path, ONNX bytes or an InferenceSession, "
                f"but got {type(source).__name__}"
            )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().float().numpy().astype(np.float32)}
        out = self.session.run(None, feed)[0]  # (B, classes) numpy
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)


class CachedTeacher(Teacher):
    """Memoise another teacher's logits per input sample (offline KD for fixed training data).

    Each row of ``x`` is keyed by its raw bytes, so a sample seen in an earlier epoch (in any
    batch order) reuses the stored logits ``(classes,)`` instead of running the teacher again.
    Only valid without random augmentation; opaque (``module`` is None), so logit KD only.
    """

    def __init__(self, teacher: Any, max_items: int = 1_000_000) -> None:
        self.inner = as_teacher(teacher)
        self.max_items = max_items
        self._cache: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().float().contiguous().numpy()
        keys = [r.tobytes() for r in rows]  # one key per sample
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        fresh = self.inner(x[missing]).detach().cpu() if missing else None  # (n_missing, classes)
        new = dict(zip(missing, fresh, strict=True)) if fresh is not None else {}
        room = len(self._cache) + len(new) <= self.max_items
        if room:
            self._cache.update((keys[i], out) for i, out in new.items())
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        out = [new[i] if i in new else self._cache[k] for i, k in enumerate(keys)]
        return torch.stack(out).to(x.device)  # (B, classes)

    def close(self) -> None:
        self.inner.close()


def as_teacher(teacher: Any) -> Teacher:
    """Wrap what the user passed: a Teacher, an nn.Module, an ORT session, ONNX bytes or a
    path (``.onnx`` -> ORT; any other file -> :func:`slimkit.io.load`, never unpickled)."""
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return TorchTeacher(teacher)
    if isinstance(teacher, bytes) or (hasattr(teacher, "run") and hasattr(teacher, "get_inputs")):
        return OnnxTeacher(teacher)
    if isinstance(teacher, (str, os.PathLike)):
        path = Path(teacher)
        if path.suffix.lower() == ".onnx":
            return OnnxTeacher(path)
        if not path.exists():
            raise ConfigError(
                f"teacher {str(teacher)!r} is not an existing file; pass an nn.Module, an .onnx "
                "file or a slimkit model file (.safetensors / .slim)"
            )
        from slimkit import io as slim_io

        return TorchTeacher(slim_io.load(path))
    raise ConfigError(
        f"a teacher must be an nn.Module, an .onnx path/bytes, an InferenceSession or a slimkit "
        f"model file, but got {type(teacher).__name__}"
    )
