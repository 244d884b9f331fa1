"""Per-layer sensitivity scan: accuracy vs sparsity, one layer pruned at a time.

For each chosen layer and each sparsity, only that layer's smallest-|w| weights are zeroed, the
accuracy is measured, and the weights are restored; the model is left unchanged. The table is
keyed by layer name (JSON-ready) and can be drawn to a PNG with matplotlib. Layers whose curve
stays flat can take high sparsity; steep ones should get less (Han et al. 2015, Fig. 6).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import atomic
from slimkit.config import check_int, check_range, select_modules
from slimkit.errors import ConfigError
from slimkit.pruning.masks import _lowest_k_mask, weight_of

PLOT_SUFFIX = ".png"  # SensitivityTable.plot always writes PNG bytes


def check_plot_path(path: str | os.PathLike[str], what: str = "the plot path") -> Path:
    """Refuse, before any work, a plot path :meth:`SensitivityTable.plot` could not write: a
    folder, a file in the way of its folder, a folder this process may not write into, or a
    name not ending in ``.png`` (the bytes are PNG whatever the name says). Writes nothing.
    ``what``: how the user named the path (``"--plot"``), for the message."""
    final = atomic.check_writable(path)  # the folder, the file in the way, the permission
    if final.suffix.lower() != PLOT_SUFFIX:
        hint = final.with_suffix(PLOT_SUFFIX) if final.name else Path("sensitivity.png")
        raise ConfigError(
            f"{what} must end in {PLOT_SUFFIX} (the sensitivity plot is written as PNG), but got "
            f"{str(final)!r}; name it e.g. {str(hint)!r}"
        )
    return final


@dataclasses.dataclass
class SensitivityTable:
    baseline: float  # accuracy of the unpruned model
    sparsities: list[float]
    accuracy: dict[str, list[float]]  # layer name -> accuracy at each sparsity

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def drop(self, layer: str) -> list[float]:
        """Accuracy loss (baseline - accuracy) of ``layer`` at each sparsity."""
        return [self.baseline - a for a in self.accuracy[layer]]

    def max_sparsity(self, max_drop: float) -> dict[str, float]:
        """Per layer, the highest scanned sparsity whose accuracy loss is <= ``max_drop``."""
        out = {}
        for name, accs in self.accuracy.items():
            ok = [
                s
                for s, a in zip(self.sparsities, accs, strict=True)
                if self.baseline - a <= max_drop
            ]
            out[name] = max(ok, default=0.0)
        return out

    def plot(
        self, path: str | os.PathLike[str], title: str = "per-layer pruning sensitivity"
    ) -> None:
        """Write accuracy-vs-sparsity curves (one per layer) to a PNG file, atomically."""
        check_plot_path(path)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, accs in self.accuracy.items():
            ax.plot(self.sparsities, accs, marker="o", label=name)
        ax.axhline(self.baseline, color="gray", linestyle="--", label="dense")
        ax.set_xlabel("sparsity of the layer")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        atomic.write_bytes(path, buf.getvalue())


@torch.no_grad()
def _accuracy(model: nn.Module, loader: Any, max_batches: int | None) -> float:
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise ConfigError(
            "sensitivity scan needs at least one evaluation sample, but the loader is empty"
        )
    return correct / total


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    data: Any,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    *,
    targets: Sequence[str] = (),
    ignore: Sequence[str] = (),
    max_batches: int | None = None,
    plot: str | os.PathLike[str] | None = None,
) -> SensitivityTable:
    """Scan each chosen layer at each sparsity (magnitude, that layer only) on ``data.test``.

    ``data`` is a DataBundle (its test split is used) or a loader of ``(x, y)``. A ``plot``
    path that could not be written is refused before the scan (:func:`check_plot_path`).
    """
    if not sparsities:
        raise ConfigError("sparsities must list at least one value, but got an empty list")
    for s in sparsities:
        check_range("sparsity", s, 0.0, 1.0, high_open=True)
    if max_batches is not None:
        check_int("max_batches", max_batches, 1, 10**9)
    if plot is not None:
        check_plot_path(plot)
    loader = getattr(data, "test", data)
    layers = select_modules(model, targets, ignore, types=(nn.Linear, nn.Conv2d))
    was_training = model.training
    model.eval()
    try:
        baseline = _accuracy(model, loader, max_batches)
        table: dict[str, list[float]] = {}
        for name, module in layers.items():
            weight = weight_of(module)
            original = weight.detach().clone()
            accs = []
            for s in sparsities:
                keep = _lowest_k_mask(original.abs(), round(s * original.numel()))
                weight.copy_(original * keep)
                accs.append(_accuracy(model, loader, max_batches))
            weight.copy_(original)
            table[name] = accs
    finally:
        model.train(was_training)
    result = SensitivityTable(baseline, [float(s) for s in sparsities], table)
    if plot is not None:
        result.plot(plot)
    return result
