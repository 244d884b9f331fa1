"""A self-contained ``report.html`` (no network: CSS inline, plots as base64 PNG data URIs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from slimkit import atomic
from slimkit.report import plots

COLUMNS = [
    ("index", "#"),
    ("stage", "stage"),
    ("method", "method"),
    ("accuracy", "accuracy"),
    ("bytes_slim", ".slim bytes"),
    ("bits_per_weight", "bits/weight"),
    ("bytes_safetensors", "safetensors bytes"),
    ("params", "params"),
    ("nonzeros", "nonzeros"),
    ("flops", "FLOPs"),
    ("latency_ms", "ORT latency b=1 (ms)"),
    ("seconds", "stage time (s)"),
]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0} td.l,th.l{text-align:left}
.pass{color:#0a0;font-weight:bold} .fail{color:#c00;font-weight:bold}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}x"  # "-x" when nothing was measured


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f'<h3>{html.escape(alt)}</h3><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], table_id: str) -> str:
    head = "".join(
        f'<th class="{"l" if k in ("stage", "method") else ""}">{html.escape(t)}</th>'
        for k, t in columns
    )
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="{"l" if k in ("stage", "method") else ""}">{_fmt(r.get(k))}</td>'
            for k, _ in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render(metrics: dict[str, Any]) -> str:
    """The report page of one run's ``metrics.json``."""
    rows = metrics["rows"]
    gate = metrics["gate"]
    verdict = (
        '<span class="pass">PASS</span>'
        if gate["passed"]
        else '<span class="fail">FAIL: accuracy gate missed</span>'
    )
    drop = "-" if gate["drop_pp"] is None else f"{gate['drop_pp']:.2f} pp"
    shipped = gate.get("artifact_drops_pp") or {}  # each shipped file's own drop (gated too)
    if shipped:
        missed = gate.get("artifacts_missed") or {}
        drop += "; shipped files " + ", ".join(
            f"{html.escape(k)} {round(v, 2) + 0.0:.2f} pp" + (" (missed)" if k in missed else "")
            for k, v in shipped.items()
        )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>slimkit report: {html.escape(metrics['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>slimkit report: {html.escape(metrics['name'])}</h1>",
        f"<p>Result: {verdict}. Accuracy drop {drop} (limit: {_fmt(gate['max_drop_pp'])} pp; "
        f"reference {_fmt(gate['reference_accuracy'])}, final {_fmt(gate['final_accuracy'])}). "
        f"Dense fp32: {metrics['dense_fp32_bytes']:,} bytes; compression ratio "
        f"<b>{_ratio(metrics.get('compression_ratio'))}</b> (dense fp32 bytes / .slim file bytes"
        + (
            f" of {html.escape(metrics['compression_ratio_of'])}"
            if metrics.get("compression_ratio_of")
            else ""
        )
        + ").</p>",
        *(f'<p class="fail">Warning: {html.escape(w)}</p>' for w in metrics.get("warnings") or []),
        "<h2>Per-stage measurements</h2>",
        "<p>Every figure is measured, none estimated: bytes are the sizes of the files the run "
        "wrote, latency is ONNX Runtime's median on the model exported after the stage, and "
        "accuracy is the model's (in memory, after the stage) on the test split."
        + (
            " The Artifacts table gives the accuracy of each written file loaded back."
            if any(a.get("accuracy") is not None for a in (metrics.get("artifacts") or {}).values())
            else ""
        )
        + "</p>",
        _table(rows, COLUMNS, "stages"),
    ]
    arts = metrics.get("artifacts") or {}
    if arts:
        art_rows = [
            {
                "format": k,
                "path": v.get("path"),
                "bytes": v.get("bytes"),
                "accuracy": v.get("accuracy"),
            }
            for k, v in arts.items()
        ]
        parts += [
            "<h2>Artifacts</h2>",
            _table(
                art_rows,
                [
                    ("format", "format"),
                    ("path", "path"),
                    ("bytes", "bytes"),
                    ("accuracy", "accuracy"),
                ],
                "artifacts",
            ),
        ]
        slim = arts.get("slim", {}).get("stats")
        if slim:
            trows = [
                {
                    "tensor": t["name"],
                    "encoding": t["encoding"],
                    "numel": t["numel"],
                    "nonzeros": t["nonzeros"],
                    "bits": t["bits"],
                    "bytes": t["bytes"],
                    "bpw": t["bits_per_weight"],
                }
                for t in slim["tensors"]
            ]
            parts += [
                "<h3>.slim tensors</h3>",
                _table(
                    trows,
                    [
                        ("tensor", "tensor"),
                        ("encoding", "encoding"),
                        ("numel", "numel"),
                        ("nonzeros", "nonzeros"),
                        ("bits", "code bits"),
                        ("bytes", "bytes"),
                        ("bpw", "bits/weight"),
                    ],
                    "slim-tensors",
                ),
            ]
    bench = (metrics.get("notes") or {}).get("benchmark")
    if bench:
        parts += [
            "<h2>Benchmark</h2>",
            _table(
                bench,
                [
                    ("artifact", "artifact"),
                    ("runner", "runner"),
                    ("batch", "batch"),
                    ("threads", "threads"),
                    ("median_ms", "median ms"),
                    ("p90_ms", "p90 ms"),
                ],
                "benchmark",
            ),
        ]
    parts.append("<h2>Plots</h2>")
    parts.append(_img(plots.accuracy_vs_bytes(rows), "accuracy vs bytes per stage"))
    parts.append(
        _img(plots.layer_sparsity_bits(rows[-1].get("layers", {})), "per-layer sparsity and bits")
    )
    parts.append(
        _img(
            plots.weight_histograms(metrics.get("hist_before"), metrics.get("hist_after")),
            "weight histograms before and after",
        )
    )
    for key, note in (metrics.get("notes") or {}).items():
        if isinstance(note, dict) and "curves" in note:
            parts.append(_img(plots.sensitivity_curves(note), f"sensitivity curves ({key})"))
    parts += [
        "<h2>Recipe</h2>",
        f"<pre>{html.escape(metrics['recipe_yaml'])}</pre>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report(metrics: dict[str, Any], out: str | Path) -> Path:
    path = Path(out) / "report.html"
    atomic.write_text(path, render(metrics))
    return path
