"""Matplotlib plots of a pipeline run, returned as PNG bytes (embedded as base64 in the report)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # Fixed metadata so the same run renders the same bytes (no software/date stamps).
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def accuracy_vs_bytes(rows: list[dict[str, Any]]) -> bytes | None:
    """Accuracy against .slim bytes on disk, one point per stage."""
    pts = [
        (r["bytes_slim"], r["accuracy"], f"{r['index']}:{r['stage']}")
        for r in rows
        if r.get("accuracy") is not None
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs, ys, labels = zip(*pts, strict=True)
    ax.plot(xs, [100 * y for y in ys], "o-")
    for x, y, lab in pts:
        ax.annotate(lab, (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(".slim artifact bytes (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs bytes per stage")
    ax.grid(alpha=0.3)
    return _png(fig)


def layer_sparsity_bits(layers: dict[str, dict[str, float]]) -> bytes | None:
    """Per-layer sparsity (bars) and bits per stored weight (line) of the final model."""
    if not layers:
        return None
    names = list(layers)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), [100 * layers[n]["sparsity"] for n in names], color="tab:blue")
    ax.set_ylabel("sparsity (%)", color="tab:blue")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(range(len(names)), [layers[n]["bits"] for n in names], "s-", color="tab:red")
    ax2.set_ylabel("bits per weight", color="tab:red")
    ax2.set_ylim(0, 33)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_title("per-layer sparsity and bits (final model)")
    return _png(fig)


def weight_histograms(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bytes | None:
    """Histogram of nonzero weights before and after compression (zeros counted in the title)."""
    if not before or not after:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, h, title in ((axes[0], before, "before"), (axes[1], after, "after")):
        edges = h["edges"]
        ax.stairs(h["counts"], edges, fill=True)
        ax.set_title(f"{title}: {h['zeros']:,} of {h['total']:,} weights are zero", fontsize=9)
        ax.set_xlabel("weight value")
    axes[0].set_ylabel("count (nonzero weights)")
    return _png(fig)


def sensitivity_curves(table: dict[str, Any]) -> bytes | None:
    """Accuracy of each layer pruned alone at several sparsities (a sensitivity scan)."""
    curves = table.get("curves") if isinstance(table, dict) else None
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, pts in curves.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, ".-", label=name)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6)
    ax.set_title("sensitivity scan")
    return _png(fig)
