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
wraps them into the run's ``metrics.json`` and a ``report.html``.
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


def build_hf_stage(index: int, opts: dict[str, Any], recipe: Recipe) -> HFStageConfig:
    """Validate an ``hf_compress`` stage's options against the recipe around it."""
    from slimkit.transformers import EncoderInt8, EncoderStructural, MeasureConfig

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
    allowed = {"int8", "structural", "latency"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; valid options: {sorted(allowed)}")
    if opts.get("int8", {}) is None and opts.get("structural") is None:
        raise ConfigError("int8 and structural are both null: nothing to compress")
    int8 = opts.get("int8", {})
    structural = opts.get("structural")
    latency = dict(opts.get("latency") or {})
    latency.setdefault("threads", recipe.measure.threads)
    if "batch_sizes" in latency:
        latency["batch_sizes"] = tuple(latency["batch_sizes"])
    try:
        measure = MeasureConfig(**latency)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(MeasureConfig)]
        raise ConfigError(f"latency: {exc}; valid keys: {fields}") from None
    return HFStageConfig(
        int8=None if int8 is None else EncoderInt8.from_dict(int8),
        structural=None if structural is None else EncoderStructural.from_dict(structural),
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
    from slimkit.pipeline.runner import RunResult
    from slimkit.transformers import compress_encoder
    from slimkit.transformers.loader import check_folder

    require_only_hf_stage(recipe)  # model.hf with other stages and no hf_compress
    cfg: HFStageConfig = plans[0].config
    folder = recipe.model.hf
    if folder is not None:
        check_folder(folder)  # before writing anything: names the missing file
    assert recipe.data is not None  # build_hf_stage checked it
    sentences = load_corpus(recipe.data.train_samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        "notes": {HF_STAGE: enc_metrics},
        "dense_fp32_bytes": fp32_bytes,
        "compression_ratio": fp32_bytes / final_bytes,
        "gate": {"passed": True},
    }
    report = out / "report.html"
    atomic.write_text(report, _report_html(recipe.name, measured))
    atomic.write_json(out / "metrics.json", metrics)
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


def _report_html(name: str, measured: dict[str, dict[str, Any]]) -> str:
    body = "".join(f"<li>{html.escape(line)}</li>" for line in _table_lines(measured))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>slimkit report: {html.escape(name)}</title></head><body>"
        f"<h1>slimkit report: {html.escape(name)}</h1>"
        "<p>Measured on the files written: bytes on disk, ONNX Runtime latency (medians of "
        "interleaved rounds), embedding fidelity to the fp32 PyTorch model.</p>"
        f"<ul style='font-family: monospace'>{body}</ul></body></html>"
    )
