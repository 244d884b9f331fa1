"""Matplotlib plots of a pipeline run, returned as PNG bytes (embedded as base64 in the report)."""

from __future__ import annotations

import io
from collections.abc import Sequence
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


def _label_bars(
    ax, bars, notes: Sequence[str | None], fontsize: int = 8, rotation: float = 0
) -> None:
    """Write ``notes[i]`` just above bar ``i`` (none where it is None)."""
    for rect, note in zip(bars, notes, strict=True):
        if note is None:
            continue
        ax.annotate(
            note,
            (rect.get_x() + rect.get_width() / 2, rect.get_height()),
            textcoords="offset points",
            xytext=(0, 2),
            ha="center",
            va="bottom",
            fontsize=fontsize,
            rotation=rotation,
        )


def accuracy_vs_bytes(rows: list[dict[str, Any]]) -> bytes | None:
    """Accuracy against .slim bytes on disk, one point per stage (a stage whose .slim could not
    be written has no size: left out, not drawn at x=None, which failed inside savefig)."""
    pts = [
        (r["bytes_slim"], r["accuracy"], f"{r['index']}:{r['stage']}")
        for r in rows
        if r.get("accuracy") is not None and r.get("bytes_slim") is not None
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


def _mpl_text(s: str) -> str:
    """A label as literal text: an unpaired ``$`` would otherwise start matplotlib mathtext."""
    return s.replace("$", r"\$")


def _layer_index(name: str) -> int:
    """``"encoder.layer.3"`` -> 3 (0 when the name does not end in a number)."""
    tail = name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _batch_sizes(measured: dict[str, dict[str, Any]]) -> list[int]:
    keys = {k for row in measured.values() for k in row if k.startswith("latency_ms_b")}
    return sorted(int(k.removeprefix("latency_ms_b")) for k in keys)


def encoder_variants(measured: dict[str, dict[str, Any]], reference: str | None) -> bytes | None:
    """An encoder's variants side by side: latency per batch size (speed-up vs ``reference``
    annotated), size on disk, and fidelity (cosine mean, Spearman) to the fp32 model.

    ``measured``: ``{variant: {"bytes", "latency_ms_b{n}", "fidelity": {...}}}`` as
    :func:`slimkit.transformers.api.measure_onnx` returns it.
    """
    if not measured:
        return None
    names = list(measured)
    labels = [_mpl_text(n) for n in names]
    others = iter(c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c != "#7f7f7f")
    colors = ["#7f7f7f" if n == reference else next(others, "tab:blue") for n in names]
    ref = measured.get(reference or "", {})
    batches = _batch_sizes(measured)
    n_panels = len(batches) + 2
    nrows = (n_panels + 1) // 2
    fig, axes = plt.subplots(nrows, 2, figsize=(10, 3.3 * nrows), squeeze=False)
    flat = list(axes.flat)
    if n_panels % 2:
        flat[-1].remove()
    xs = range(len(names))

    def versus(name: str, base: float | None, v: float, word: str) -> str:
        """The second line of a bar's label: ``2.50x faster`` (base / v) or ``reference``."""
        if name == reference:
            return "\nreference"
        return f"\n{base / v:.2f}x {word}" if base and v > 0 else ""

    def bars(ax, values: list[float | None], notes: list[str], title: str, ylabel: str) -> None:
        heights = [0.0 if v is None else v for v in values]
        drawn = ax.bar(xs, heights, color=colors, width=0.6)
        _label_bars(ax, drawn, notes)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=15 if len(names) > 3 else 0, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_ylim(0, max(heights + [1e-9]) * 1.3)
        ax.grid(axis="y", alpha=0.3)

    for ax, b in zip(flat, batches, strict=False):
        key = f"latency_ms_b{b}"
        vals = [measured[n].get(key) for n in names]
        base = ref.get(key)
        notes = [
            "-" if v is None else f"{v:.2f} ms" + versus(n, base, v, "faster")
            for n, v in zip(names, vals, strict=True)
        ]
        bars(ax, vals, notes, f"ORT latency, batch {b} (lower is better)", "ms per batch")
    size_ax, fid_ax = flat[len(batches)], flat[len(batches) + 1]
    mbs = [None if "bytes" not in measured[n] else measured[n]["bytes"] / 1e6 for n in names]
    base_mb = None if ref.get("bytes") is None else ref["bytes"] / 1e6
    notes = [
        "-" if v is None else f"{v:.1f} MB" + versus(n, base_mb, v, "smaller")
        for n, v in zip(names, mbs, strict=True)
    ]
    bars(size_ax, mbs, notes, "size on disk (lower is better)", "MB")

    metrics = [("cosine_mean", "cosine mean"), ("spearman", "Spearman")]
    width = 0.8 / len(names)
    lows: list[float] = []
    for i, n in enumerate(names):
        fid = measured[n].get("fidelity") or {}
        vals = [fid.get(k) for k, _ in metrics]
        pos = [j - 0.4 + width * (i + 0.5) for j in range(len(metrics))]
        drawn = fid_ax.bar(
            pos, [0.0 if v is None else v for v in vals], width, color=colors[i], label=labels[i]
        )
        lows += [v for v in vals if v is not None]
        _label_bars(
            fid_ax,
            drawn,
            [None if v is None else f"{v:.4f}" for v in vals],
            fontsize=7,
            rotation=90 if len(names) > 3 else 0,
        )
    lo = min(lows, default=0.0)
    span = max(1.0 - lo, 0.002)
    bottom = max(0.0, lo - 0.6 * span)
    fid_ax.set_ylim(bottom, 1.0 + 0.35 * span)
    fid_ax.set_xticks(range(len(metrics)))
    fid_ax.set_xticklabels([t for _, t in metrics], fontsize=8)
    fid_ax.set_title(f"fidelity to fp32 (higher is better; axis from {bottom:.3f})", fontsize=10)
    fid_ax.legend(
        fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(names), 4)
    )
    fid_ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def encoder_layer_widths(structural: dict[str, Any] | None) -> bytes | None:
    """FFN neurons kept per encoder layer (bars), heads kept written above each bar."""
    if not structural:
        return None
    ffn = structural.get("ffn_kept") or {}
    heads = structural.get("heads_kept") or {}
    layers = sorted(set(ffn) | set(heads), key=_layer_index)
    if not layers:
        return None
    kept = structural.get("kept_layers") or []

    def label(name: str) -> str:
        i = _layer_index(name)  # student index
        return f"layer {kept[i] if i < len(kept) else i}"

    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(layers) + 2), 3.0))
    widths = [ffn.get(n, 0) for n in layers]
    drawn = ax.bar(range(len(layers)), widths, color="tab:blue", width=0.6)
    notes = [
        f"{w:,.0f}" + (f"\n{len(heads[n])} heads" if n in heads else "")
        for w, n in zip(widths, layers, strict=True)
    ]
    _label_bars(ax, drawn, notes)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([label(n) for n in layers], fontsize=8)
    ax.set_ylabel("FFN neurons kept", fontsize=8)
    ax.set_ylim(0, max(widths + [1]) * 1.3)
    ax.set_title("structural pruning: FFN width per kept layer", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
