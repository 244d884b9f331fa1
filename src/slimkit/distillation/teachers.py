"""Teachers: a PyTorch module (zoo, pruned or quantized slimkit model) or an ONNX Runtime session.

Both run in inference mode without gradients and return logits ``(B, classes)`` as float32
torch tensors. ``watch(layers)`` / ``run(x) -> (logits, {layer: feature})`` / ``unwatch()`` give
the outputs of named layers too; only a :class:`TorchTeacher` (or a :class:`CachedTeacher` around
one) supports that, so feature losses need it; an :class:`OnnxTeacher` serves logit KD.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.config import check_threads
from slimkit.distillation.hooks import FeatureHooks
from slimkit.errors import ConfigError


class Teacher:
    """Base: ``teacher(x) -> logits`` with no gradients; ``module`` is None when opaque."""

    module: nn.Module | None = None
    supports_features = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def watch(self, layers: Sequence[str]) -> None:
        """Start capturing the outputs of ``layers`` (names resolved now, near-match errors)."""
        if layers:
            raise ConfigError(
                f"{type(self).__name__} is opaque, so it cannot give the outputs of layers "
                f"{list(layers)}; use LogitKD with an ONNX teacher, or pass the teacher as a "
                "PyTorch model"
            )

    def unwatch(self) -> None:
        """Stop capturing and remove every hook; safe to call in any state."""

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``(B, classes)`` and the watched layers' outputs, without gradients."""
        return self(x), {}

    def close(self) -> None:
        """Give back anything borrowed (e.g. restore the module's train/eval mode)."""


class TorchTeacher(Teacher):
    """A PyTorch teacher, run in eval mode under ``torch.no_grad``."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"TorchTeacher needs an nn.Module, but got {type(module).__name__}")
        self.module = module
        self._was_training = module.training
        self._hooks: FeatureHooks | None = None
        module.eval()

    supports_features = True

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        if self.module.training:  # someone switched it back; the teacher is never trained here
            self.module.eval()
        return self.module(x).float()

    def watch(self, layers: Sequence[str]) -> None:
        assert self.module is not None
        self.unwatch()
        if layers:
            self._hooks = FeatureHooks(self.module, layers).attach()

    def unwatch(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self(x)
        if self._hooks is None:
            return logits, {}
        feats = {n: self._hooks.get(n).detach() for n in self._hooks.names}
        self._hooks.clear()
        return logits, feats

    def close(self) -> None:
        self.unwatch()
        if self.module is not None:
            self.module.train(self._was_training)


class OnnxTeacher(Teacher):
    """An ONNX model run by ONNX Runtime (checker + external-data checks via ``make_session``).

    ``threads`` (1..256): the intra-op threads of the session built from a path or bytes."""

    def __init__(self, source: bytes | str | os.PathLike[str] | Any, *, threads: int = 1) -> None:
        # Up front: make_session refused 0 (ORT's "every core") only after the file was found
        # and onnxruntime imported, and a caller's session never met the check at all.
        check_threads(threads)
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
    """Memoise another teacher's outputs per input sample (offline KD over fixed data).

    Each row of ``x`` is keyed by its raw bytes, so a sample seen in an earlier epoch (in any
    batch order) reuses its stored logits ``(classes,)`` and watched features ``(C, H, W)``
    instead of running the teacher again. Valid only without random augmentation. Memory is
    one copy of every watched feature per training sample; past ``max_items`` samples new
    ones are computed but not stored.
    """

    def __init__(self, teacher: Any, max_items: int = 1_000_000) -> None:
        self.inner = as_teacher(teacher)
        self.module = self.inner.module
        self.supports_features = self.inner.supports_features
        self.max_items = max_items
        self._layers: tuple[str, ...] = ()
        self._cache: dict[bytes, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.hits = self.misses = 0

    def watch(self, layers: Sequence[str]) -> None:
        self.inner.watch(layers)
        if tuple(layers) != self._layers:  # other layers: stored entries lack them
            self._cache.clear()
        self._layers = tuple(layers)

    def unwatch(self) -> None:
        self.inner.unwatch()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = x.detach().cpu().float().contiguous().numpy()
        keys = [r.tobytes() for r in rows]  # one key per sample
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        new: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        if missing:
            logits, feats = self.inner.run(x[missing])  # (n_missing, classes), {name: (n, ...)}
            for j, i in enumerate(missing):
                new[i] = (
                    logits[j].detach().cpu(),
                    {n: f[j].detach().cpu() for n, f in feats.items()},
                )
            if len(self._cache) + len(new) <= self.max_items:
                self._cache.update((keys[i], entry) for i, entry in new.items())
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        entries = [new[i] if i in new else self._cache[k] for i, k in enumerate(keys)]
        out_logits = torch.stack([e[0] for e in entries]).to(x.device)  # (B, classes)
        out_feats = {n: torch.stack([e[1][n] for e in entries]).to(x.device) for n in self._layers}
        return out_logits, out_feats

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
