"""The ``hf_compress`` stage: a Hugging Face sentence encoder through ``slimkit compress``.

```yaml
model: {hf: null}                  # a local HF folder, or null for the bundled all-MiniLM-L6-v2
data: {dataset: corpus_en}         # sentences (slimkit.data.load_corpus); train_samples caps them
measure: {threads: 2}
stages:
  - hf_compress:
      int8: {mode: dynamic, per_channel: true, auto_exclude: 1}     # EncoderInt8, or null
      structural: {ffn_fraction: 0.5, distill: {steps: 300}}       # EncoderStructural, or null
      latency: {batch_sizes: [1, 32], batches: 8, rounds: 3}       # MeasureConfig (optional)
```

An HF recipe is one ``hf_compress`` stage (the encoder is not an ``nn.Module`` checkpointed
stage by stage like the zoo models): it calls
:func:`slimkit.transformers.compress_encoder` into the output folder, which writes
``model_fp32.onnx``, ``model.onnx``, the tokenizer files and the measured figures; this module
wraps them into the run's ``metrics.json`` (which records the tokenizer files, so the next run
into the folder removes those it does not write again) and a ``report.html``.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit import atomic
from slimkit.errors import ConfigError

if TYPE_CHECKING:
    from slimkit.pipeline.recipe import Recipe
    from slimkit.pipeline.runner import RunResult
    from slimkit.pipeline.stages import StagePlan

HF_STAGE = "hf_compress"
HF_DATASETS = ("corpus_en",)


@dataclasses.dataclass(frozen=True)
class HFStageConfig:
    """The validated options of an ``hf_compress`` stage."""

    int8: Any  # EncoderInt8 | None
    structural: Any  # EncoderStructural | None
    measure: Any  # MeasureConfig


def is_hf_recipe(recipe: Recipe) -> bool:
    return recipe.model.hf != "" or any(k == HF_STAGE for k, _ in recipe.stage_list())


def require_only_hf_stage(recipe: Recipe) -> None:
    """An HF recipe is exactly one ``hf_compress`` stage (checked before anything is written)."""
    kinds = [k for k, _ in recipe.stage_list()]
    if kinds != [HF_STAGE]:
        raise ConfigError(
            f"an HF recipe (model.hf) has exactly one stage, hf_compress, but got stages {kinds}"
        )


# Recipe keys that only zoo recipes read, with what an HF recipe uses instead.
_UNUSED_BY_HF = {
    "max_accuracy_drop": "an HF run has no accuracy; its fidelity is reported, not gated",
    "data.batch_size": "set hf_compress.structural.distill.batch_size (training) or "
    "hf_compress.latency.batch_sizes (timing)",
    "data.test_samples": "data.train_samples caps the sentences, which serve every step",
    "data.calib_samples": "set hf_compress.int8.calib_sentences",
    "measure.latency_runs": "set hf_compress.latency.batches and .rounds",
    "measure.onnx": "an HF run always exports ONNX",
    "model.zoo": "model.hf names the model",
    "model.path": "model.hf names the model",
    "model.image_size": "a text model has no image size",
    "model.kwargs": "model.hf names the model",
}


def refuse_unused_recipe_keys(recipe: Recipe) -> None:
    """Refuse keys given other than their defaults in an HF recipe that only zoo recipes read
    (they were silently ignored). Defaults pass, so a dumped recipe (every key written) loads."""
    set_keys = []
    for key in _UNUSED_BY_HF:
        *section_name, field = key.split(".")
        owner = getattr(recipe, section_name[0]) if section_name else recipe
        if owner is None:
            continue
        default = type(owner).model_fields[field].get_default(call_default_factory=True)
        if getattr(owner, field) != default:
            set_keys.append(key)
    if set_keys:
        key, others = set_keys[0], set_keys[1:]
        also = f" (nor is {', '.join(others)})" if others else ""
        raise ConfigError(
            f"{key} is not used by an HF recipe (model.hf){also}, but the recipe sets it to "
            f"a value other than its default; remove it: {_UNUSED_BY_HF[key]}"
        )


def build_hf_stage(index: int, opts: dict[str, Any], recipe: Recipe) -> HFStageConfig:
    """Validate an ``hf_compress`` stage's options against the recipe around it."""
    from slimkit.transformers import EncoderInt8, EncoderStructural, MeasureConfig
    from slimkit.transformers.api import FIDELITY_K

    if recipe.model.hf == "":
        raise ConfigError(
            f"needs a Hugging Face model, but the recipe's model is {recipe.model.model_dump()}; "
            "use model: {hf: null} (bundled all-MiniLM-L6-v2) or model: {hf: path/to/folder}"
        )
    require_only_hf_stage(recipe)
    if recipe.data is None or recipe.data.dataset not in HF_DATASETS:
        got = None if recipe.data is None else recipe.data.dataset
        raise ConfigError(
            f"needs sentences: data.dataset must be one of {list(HF_DATASETS)}, but got {got!r}"
        )
    refuse_unused_recipe_keys(recipe)
    allowed = {"int8", "structural", "latency"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; valid options: {sorted(allowed)}")
    if opts.get("int8", {}) is None and opts.get("structural") is None:
        raise ConfigError("int8 and structural are both null: nothing to compress")
    int8 = opts.get("int8", {})
    structural = opts.get("structural")
    for name, value in (
        ("int8", int8),
        ("structural", structural),
        ("latency", opts.get("latency")),
    ):
        if value is not None and not isinstance(value, dict):  # `int8: true`, `latency: [1, 32]`
            raise ConfigError(
                f"hf_compress.{name} must be a mapping of options or null, but got {value!r:.80}; "
                f"see examples/minilm.yaml"
            )
    if isinstance(structural, dict):  # the recipe's seed drives distillation unless set there
        distill = structural.get("distill", {})
        if isinstance(distill, dict) and "seed" not in distill:  # distill: null stays refused
            structural = {**structural, "distill": {**distill, "seed": recipe.seed}}
    latency = dict(opts.get("latency") or {})
    latency.setdefault("threads", recipe.measure.threads)
    if "batch_sizes" in latency:
        sizes = latency["batch_sizes"]
        if not isinstance(sizes, (list, tuple)):
            raise ConfigError(
                f"latency.batch_sizes must be a list of batch sizes, but got {sizes!r:.80}; "
                "write e.g. batch_sizes: [1, 32]"
            )
        latency["batch_sizes"] = tuple(sizes)
    train_samples = recipe.data.train_samples
    if train_samples is not None and train_samples <= FIDELITY_K:
        raise ConfigError(
            f"data.train_samples must be more than {FIDELITY_K} for hf_compress (fidelity's "
            f"top-{FIDELITY_K} agreement ranks that many neighbours), but got {train_samples}; "
            f"raise it or drop it (all {HF_DATASETS[0]} sentences)"
        )
    try:
        measure = MeasureConfig(**latency)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(MeasureConfig)]
        raise ConfigError(f"latency: {exc}; valid keys: {fields}") from None
    built = None if structural is None else EncoderStructural.from_dict(structural)
    if built is not None:
        from slimkit.transformers.structural import check_prunes_something

        check_prunes_something(built, None)  # at parse time, not after loading the model
    return HFStageConfig(
        int8=None if int8 is None else EncoderInt8.from_dict(int8),
        structural=built,
        measure=measure,
    )


def run_hf_recipe(
    recipe: Recipe,
    plans: list[StagePlan],
    out: str | os.PathLike[str],
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run an HF recipe (its ``plans`` from ``recipe.validate_stages()``) into ``out``."""
    from slimkit.data import load_corpus
    from slimkit.pipeline.runner import RUN_REPORTS, RunResult, previous_run_files
    from slimkit.transformers import compress_encoder
    from slimkit.transformers.loader import check_folder

    require_only_hf_stage(recipe)  # model.hf with other stages and no hf_compress
    cfg: HFStageConfig = plans[0].config
    folder = recipe.model.hf
    if folder is not None:
        check_folder(folder)  # before writing anything: names the missing file
    assert recipe.data is not None  # build_hf_stage checked it
    sentences = load_corpus(recipe.data.train_samples)
    # compress_encoder makes the folder: when it is new, a failed run then removes it again.
    out = Path(out)
    # An earlier run's files, read before compress_encoder replaces its metrics.json (the
    # record), deleted once this run has finished: a failed run leaves them as they were.
    earlier = previous_run_files(out, keep=folder)
    log(f"[1/1] {HF_STAGE} ({len(sentences)} sentences)")
    enc_metrics = compress_encoder(
        folder,
        out,
        int8=cfg.int8,
        structural=cfg.structural,
        sentences=sentences,
        measure=cfg.measure,
        log=log,
    )
    tokenizer_files = list(enc_metrics.get("tokenizer_files", []))
    written = {"model_fp32.onnx", "model.onnx", *tokenizer_files, *RUN_REPORTS}
    for path in earlier:  # e.g. another model's vocab.txt, a zoo run's checkpoints
        if not (path.parent == out and path.name in written):
            path.unlink(missing_ok=True)
    measured = enc_metrics.get("measured", {})
    for line in _table_lines(measured):
        log(line)
    fp32_bytes = (out / "model_fp32.onnx").stat().st_size
    final_bytes = (out / "model.onnx").stat().st_size
    metrics: dict[str, Any] = {
        "name": recipe.name,
        "recipe": recipe.to_dict(),
        "recipe_yaml": recipe.to_yaml(),
        "rows": [],
        "artifacts": {
            "onnx-fp32": {"path": "model_fp32.onnx", "bytes": fp32_bytes},
            "onnx": {"path": "model.onnx", "bytes": final_bytes},
        },
        "tokenizer_files": tokenizer_files,  # read by the next run into this folder
        "notes": {HF_STAGE: enc_metrics},
        "dense_fp32_bytes": fp32_bytes,
        "compression_ratio": fp32_bytes / final_bytes,
        "gate": {"passed": True},
    }
    atomic.write_json(out / "metrics.json", metrics)  # first: a report that fails keeps it
    report = out / "report.html"
    atomic.write_text(report, _report_html(recipe.name, measured, enc_metrics))
    return RunResult(out, [], metrics, report, True)


def _table_lines(measured: dict[str, dict[str, Any]]) -> list[str]:
    """variant | bytes | latency per batch size | cosine mean/min | Spearman | top-k."""
    lines = []
    for name, row in measured.items():
        lat = "  ".join(
            f"{k.removeprefix('latency_ms_')} {v:.2f} ms"
            for k, v in row.items()
            if k.startswith("latency_ms_")
        )
        f = row.get("fidelity", {})
        lines.append(
            f"{name:10s} {row.get('bytes', 0):>12,} B  {lat}  cos mean {f.get('cosine_mean', 1):.4f}"
            f"  min {f.get('cosine_min', 1):.4f}  Spearman {f.get('spearman', 1):.4f}"
            f"  top-k {f.get('topk_agreement', 1):.3f}"
        )
    return lines


def _reference(measured: dict[str, dict[str, Any]]) -> str | None:
    """The fp32 variant ratios and speed-ups are taken against (``ort_fp32`` from compress_encoder)."""
    for name in ("ort_fp32", "fp32"):
        if name in measured:
            return name
    return next((n for n in measured if "fp32" in n), None)


def _ratio(base: Any, value: Any) -> str:
    """``base / value`` as ``1.23x``, or ``-`` when either is missing or not positive."""
    if not isinstance(base, int | float) or not isinstance(value, int | float) or value <= 0:
        return "-"
    return f"{base / value:.2f}x"


def _num(v: Any, spec: str) -> str:
    return "-" if not isinstance(v, int | float) or isinstance(v, bool) else format(v, spec)


def _variants_table(measured: dict[str, dict[str, Any]], reference: str | None) -> str:
    """variant | MB | x smaller | per batch size: ms, speed-up | cosine mean/min | Spearman | top-k."""
    from slimkit.report.plots import _batch_sizes

    batches = _batch_sizes(measured)
    ks = {(r.get("fidelity") or {}).get("k") for r in measured.values()} - {None}
    topk = html.escape(f"top-{ks.pop()}") if len(ks) == 1 else "top-k"
    head = ['<th class="l">variant</th>', "<th>MB on disk</th>", "<th>x smaller</th>"]
    for b in batches:
        head += [f"<th>b{b} ms</th>", f"<th>b{b} speed-up</th>"]
    head += [f"<th>{t}</th>" for t in ("cosine mean", "cosine min", "Spearman", topk)]
    ref = measured.get(reference or "", {})
    rows = []
    for name, row in measured.items():
        f = row.get("fidelity") or {}
        size = row.get("bytes")
        cells = [
            f'<td class="l">{html.escape(name)}{" (reference)" if name == reference else ""}</td>',
            f"<td>{_num(None if size is None else size / 1e6, '.2f')}</td>",
            f"<td>{_ratio(ref.get('bytes'), size)}</td>",
        ]
        for b in batches:
            ms = row.get(f"latency_ms_b{b}")
            cells += [
                f"<td>{_num(ms, '.2f')}</td>",
                f"<td>{_ratio(ref.get(f'latency_ms_b{b}'), ms)}</td>",
            ]
        cells += [f"<td>{_num(f.get(k), '.4f')}</td>" for k in ("cosine_mean", "cosine_min")]
        cells += [f"<td>{_num(f.get('spearman'), '.4f')}</td>"]
        cells += [f"<td>{_num(f.get('topk_agreement'), '.3f')}</td>"]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table id="variants"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _headline(measured: dict[str, dict[str, Any]], reference: str | None) -> str:
    """One sentence on the deployed model (``slimkit``, else the last non-reference variant)."""
    from slimkit.report.plots import _batch_sizes

    others = [n for n in measured if n != reference]
    if reference is None or not others:
        return ""
    name = "slimkit" if "slimkit" in others else others[-1]
    row, ref = measured[name], measured[reference]
    fast = [
        f"{_ratio(ref.get(f'latency_ms_b{b}'), row.get(f'latency_ms_b{b}'))} at batch {b}"
        for b in _batch_sizes(measured)
    ]
    f = row.get("fidelity") or {}
    return (
        f"<p><b>{html.escape(name)}</b>: {_ratio(ref.get('bytes'), row.get('bytes'))} smaller "
        f"than {html.escape(reference)}, faster by {', '.join(fast) or '-'}; "
        f"cosine mean {_num(f.get('cosine_mean'), '.4f')}, "
        f"Spearman {_num(f.get('spearman'), '.4f')}.</p>"
    )


def _what_was_done(enc: dict[str, Any]) -> str:
    """Structural pruning, distillation and int8 choices of ``compress_encoder``'s metrics."""
    from slimkit.report.plots import _layer_index

    esc = html.escape
    items: list[str] = []
    if enc.get("model") is not None:
        items.append(
            f"Model: <code>{esc(str(enc['model']))}</code>; "
            f"{_num(enc.get('sentences'), ',')} sentences."
        )
    fp32 = enc.get("fp32_export") or {}
    if fp32:
        items.append(
            f"fp32 ONNX export: {_num(fp32.get('bytes'), ',')} bytes, max |ORT - PyTorch| "
            f"{_num(fp32.get('max_abs_diff'), '.2g')}."
        )
    table = ""
    st = enc.get("structural")
    if st:
        before, after = st.get("params_before"), st.get("params_after")
        share = (
            f" ({after / before:.1%} of the original)"
            if isinstance(before, int) and isinstance(after, int) and before > 0
            else ""
        )
        items.append(f"Parameters: {_num(before, ',')} → {_num(after, ',')}{share}.")
        kept = st.get("kept_layers") or []
        items.append(f"Encoder layers kept: {esc(', '.join(map(str, kept))) or '-'}.")
        ffn = st.get("ffn_kept") or {}
        heads = st.get("heads_kept") or {}
        scores = st.get("head_scores") or {}
        if heads:
            n_kept = sum(len(v) for v in heads.values())
            n_all = sum(len(v) for v in scores.values()) or None
            items.append(
                f"Attention heads kept: {n_kept:,}" + (f" of {n_all:,}." if n_all else ".")
            )
        else:
            items.append("Attention heads kept: all (no head pruning).")
        if ffn:
            widths = ", ".join(
                f"{v:,}" for _, v in sorted(ffn.items(), key=lambda kv: _layer_index(kv[0]))
            )
            items.append(f"FFN widths per layer (neurons kept): {esc(widths)}.")
        else:
            items.append("FFN widths: unchanged (no FFN pruning).")
        items.append(
            f"Distillation loss: {_num(st.get('distill_loss_first'), '.4f')} → "
            f"{_num(st.get('distill_loss_last'), '.4f')} (first → last step)."
        )
        val = {int(k): v for k, v in (st.get("distill_val_spearman") or {}).items()}
        best = st.get("distill_best_step", -1)
        if val and best in val:
            items.append(
                f"Weights kept from distillation step {best} of {max(val)}: Spearman to the "
                f"teacher on held-back sentences {_num(val[best], '.4f')} (step 0, before "
                f"distillation: {_num(val[0], '.4f')}; last step: {_num(val[max(val)], '.4f')})."
            )
        layers = sorted(set(ffn) | set(heads), key=_layer_index)
        if layers:
            body = []
            for n in layers:
                i = _layer_index(n)
                orig = kept[i] if i < len(kept) else i
                h = f"{len(heads[n])}" if n in heads else "all"
                body.append(
                    f'<tr><td class="l">{esc(n)}</td><td>{esc(str(orig))}</td>'
                    f"<td>{_num(ffn.get(n), ',')}</td><td>{esc(h)}</td></tr>"
                )
            table = (
                '<table id="layers"><thead><tr><th class="l">layer (pruned model)</th>'
                "<th>original layer</th><th>FFN neurons kept</th><th>heads kept</th></tr>"
                f"</thead><tbody>{''.join(body)}</tbody></table>"
            )
    q = enc.get("int8")
    if q:
        cfg = q.get("config") or {}
        excluded = q.get("excluded_units") or []
        kept_fp32 = (
            ", ".join(f"<code>{esc(str(u))}</code>" for u in excluded) if excluded else "none"
        )
        mode = esc(str(cfg.get("mode", "?")))
        gran = "per-channel" if cfg.get("per_channel") else "per-tensor"
        items.append(f"int8: {mode}, {gran} weights; units kept fp32: {kept_fp32}.")
        split = q.get("split_units") or []
        if split:
            n_out = esc(str(cfg.get("outlier_channels", "?")))
            names = ", ".join(f"<code>{esc(str(u))}</code>" for u in split)
            items.append(f"int8 except their {n_out} outlier input channels (kept fp32): {names}.")
        token_scaled = q.get("token_scaled_units") or []
        if token_scaled:
            text = (
                f"Per-token int8 ranges for {len(token_scaled)} FFN units: each token is divided "
                "by its own absolute maximum before its int8 MatMul and multiplied back after."
            )
            gain = q.get("per_token_gain") or {}  # per_token_share < 1: how they were chosen
            total = sum(gain.values())
            if total > 0:
                got = sum(gain.get(u, 0.0) for u in token_scaled) / total
                names = ", ".join(f"<code>{esc(str(u))}</code>" for u in token_scaled)
                text += (
                    f" Chosen by emulated gain, they give {got:.0%} of what per-token ranges "
                    f"gain across all {len(gain)} candidate units: {names}."
                )
            items.append(text)
        smoothed = q.get("smoothed") or []
        if smoothed:
            items.append(f"Activation smoothing on {len(smoothed)} linear layers.")
        simp = q.get("simplified") or {}
        if simp.get("nodes_before") is not None:
            items.append(
                f"Graph simplified: {_num(simp.get('nodes_before'), ',')} → "
                f"{_num(simp.get('nodes_after'), ',')} nodes."
            )
        if cfg.get("packed"):
            items.append(
                "Padding-free (packed) graph: only attention sees the padding slots of a batch; "
                "every other layer runs on the real tokens."
                + (
                    " Each attention block is one fused ONNX Runtime node ("
                    + (
                        "QAttention"
                        if cfg.get("mode", "dynamic") == "dynamic"
                        else "MultiHeadAttention"
                    )
                    + "): runs on ONNX Runtime only."
                    if cfg.get("fused_attention", True)
                    else ""
                )
            )
    elif enc.get("export"):
        items.append("No int8: model.onnx is the fp32 export of the pruned model.")
    if not items:
        return ""
    lis = "".join(f"<li>{x}</li>" for x in items)
    return f"<h2>What was done</h2><ul>{lis}</ul>{table}"


def _report_html(
    name: str, measured: dict[str, dict[str, Any]], enc_metrics: dict[str, Any] | None = None
) -> str:
    """The run's page: variants table, what was done, plots (all inline, no network)."""
    from slimkit.report import plots
    from slimkit.report.html import _CSS, _img

    enc = enc_metrics or {}
    reference = _reference(measured)
    ref_note = (
        f"Ratios and speed-ups are against <b>{html.escape(reference)}</b> "
        "(x = reference / variant, higher is better)."
        if reference
        else "No fp32 variant measured: no ratios."
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>slimkit report: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>slimkit report: {html.escape(name)}</h1>",
        "<p>Measured on the files written: bytes on disk, ONNX Runtime latency (medians of "
        "interleaved rounds, ms per batch), embedding fidelity to the fp32 PyTorch model "
        f"(cosine of embeddings, Spearman of pairwise similarities, top-k retrieval agreement). "
        f"{ref_note}</p>",
        _headline(measured, reference),
        "<h2>Measured variants</h2>",
        _variants_table(measured, reference) if measured else "<p>Nothing measured.</p>",
        _what_was_done(enc),
        "<h2>Plots</h2>",
        _img(plots.encoder_variants(measured, reference), "latency, size and fidelity per variant"),
        _img(plots.encoder_layer_widths(enc.get("structural")), "FFN width per layer"),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
