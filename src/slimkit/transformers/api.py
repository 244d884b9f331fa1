"""One call: load a local encoder, compress it, write ONNX artifacts and measured metrics.

``compress_encoder(folder, out_dir)`` writes into ``out_dir``:
``model_fp32.onnx`` (fused fp32), ``model.onnx`` (the deployed model: structural and/or int8),
the tokenizer files, and ``metrics.json`` with bytes on disk, ORT latency (2 threads, batch 1
and 32, medians) and fidelity against the fp32 PyTorch model on the sentences.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimkit import atomic
from slimkit.errors import ConfigError
from slimkit.transformers.int8 import EncoderInt8
from slimkit.transformers.structural import EncoderStructural

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
)


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 32)
    batches: int = 8  # timed batches per batch size and round
    rounds: int = 3

    def __post_init__(self) -> None:
        from slimkit.config import check_int

        check_int("threads", self.threads, 1, 256)
        check_int("batches", self.batches, 1, 100_000)
        check_int("rounds", self.rounds, 1, 10_000)
        if not isinstance(self.batch_sizes, tuple) or not self.batch_sizes:
            raise ConfigError(
                f"batch_sizes must be a non-empty tuple such as (1, 32), but got {self.batch_sizes!r}"
            )
        for b in self.batch_sizes:
            check_int("batch_sizes entries", b, 1, 4096)


def measure_onnx(
    paths: dict[str, str],
    tokenizer: Any,
    sentences: Sequence[str],
    reference,
    max_length: int,
    m: MeasureConfig = MeasureConfig(),
    extra_runners: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Bytes, interleaved ORT latency and embedding fidelity of each ONNX file in ``paths``."""
    from slimkit.transformers.bench import interleaved_latency, make_batches, ort_runner
    from slimkit.transformers.embed import embed
    from slimkit.transformers.fidelity import embedding_fidelity

    runners = {name: ort_runner(p, m.threads) for name, p in paths.items()}
    rows: dict[str, dict[str, Any]] = {name: {} for name in [*(extra_runners or {}), *paths]}
    for name, p in paths.items():
        rows[name]["bytes"] = os.path.getsize(p)
        emb = embed(runners[name], tokenizer, sentences, max_length=max_length)
        rows[name]["fidelity"] = embedding_fidelity(reference, emb, FIDELITY_K).to_dict()
    all_runners = {**(extra_runners or {}), **runners}
    for b in m.batch_sizes:
        batches = make_batches(tokenizer, sentences, b, m.batches, max_length)
        lat = interleaved_latency(all_runners, batches, rounds=m.rounds)
        for name, ms in lat.items():
            rows[name][f"latency_ms_b{b}"] = ms
    return rows


def compress_encoder(
    folder: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    int8: EncoderInt8 | None = EncoderInt8(),
    structural: EncoderStructural | None = None,
    sentences: Sequence[str] | None = None,
    measure: MeasureConfig | None = MeasureConfig(),
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Compress a local BERT-family sentence encoder and measure it; return metrics.json content.

    ``folder=None`` uses the bundled all-MiniLM-L6-v2; ``sentences=None`` the packaged corpus.
    ``out_dir`` must be new, empty or an earlier run's folder. The run writes into
    ``out_dir/.slimkit-partial`` and moves its files up only once it has finished, models first
    and ``metrics.json`` last, so a failed run leaves an earlier run's files as they were (not
    half replaced) and removes what it wrote (no 90 MB ``model_fp32.onnx`` left from a run
    that never finished). ``metrics["tokenizer_files"]`` records the tokenizer files copied; a
    finished run removes those an earlier run recorded and this one did not copy.
    """
    sentences = _check_compress_args(int8, structural, sentences, measure)  # before any write
    atomic.refuse_foreign_folder(out_dir)
    existed = os.path.isdir(out_dir)
    out = atomic.output_dir(out_dir)
    stage = out / ".slimkit-partial"
    if stage.exists():
        if not (out / atomic.RUN_MARKER).is_file():  # hidden names pass refuse_foreign_folder
            raise ConfigError(
                f"{str(out)!r} holds {stage.name!r} but is not a slimkit run folder; move it "
                "away or give another --out"
            )
        shutil.rmtree(stage)  # left by a run that was killed
    atomic.mark_run_folder(out)
    try:
        stage.mkdir()
        metrics = _compress_encoder(folder, stage, int8, structural, sentences, measure, log)
        metrics = _repath(metrics, str(stage), str(out))
        # An earlier run's tokenizer files this run does not copy (another model's vocab.txt),
        # read from its metrics.json before that goes.
        stale = _recorded_tokenizer_files(out) - set(metrics["tokenizer_files"])
        # No metrics.json while files move: a move cut short is then visibly incomplete,
        # never an earlier run's metrics beside this run's models.
        (out / "metrics.json").unlink(missing_ok=True)
        for name in sorted(stale):
            (out / name).unlink(missing_ok=True)
        for p in sorted(stage.iterdir()):
            os.replace(p, out / p.name)
        stage.rmdir()
        atomic.write_json(out / "metrics.json", metrics)  # last: the run is complete
        return metrics
    except BaseException:
        shutil.rmtree(out if not existed else stage, ignore_errors=True)
        raise


def recorded_tokenizer_files(doc: Any) -> set[str]:
    """The tokenizer files a run record (a metrics.json's content) lists as copied: only bare
    names slimkit copies (TOKENIZER_FILES), so nothing else in a folder is ever taken for one."""
    files = doc.get("tokenizer_files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        return set()
    return {f for f in files if isinstance(f, str) and f in TOKENIZER_FILES}


def _recorded_tokenizer_files(out: Path) -> set[str]:
    """:func:`recorded_tokenizer_files` of the metrics.json an earlier run wrote into ``out``."""
    try:
        doc = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):  # no earlier run, or an unreadable record: nothing recorded
        return set()
    return recorded_tokenizer_files(doc)


FIDELITY_K = 5  # embedding_fidelity's top-k: measuring needs more sentences than this


def _check_compress_args(
    int8: Any, structural: Any, sentences: Any, measure: Any
) -> list[str] | None:
    """Types and sentence counts, checked before the output folder or the fp32 export exists."""
    from slimkit.transformers.embed import _sentence_list
    from slimkit.transformers.int8 import check_calibration_sentences

    if int8 is None and structural is None:  # two identical fp32 models, measured
        raise ConfigError(
            "int8 and structural are both None: nothing to compress; pass EncoderInt8() "
            "(the default) and/or EncoderStructural(ffn_fraction=0.2)"
        )
    for name, value, kind in (
        ("int8", int8, EncoderInt8),
        ("structural", structural, EncoderStructural),
        ("measure", measure, MeasureConfig),
    ):
        if value is not None and not isinstance(value, kind):
            raise ConfigError(
                f"{name} must be {kind.__name__}(...) or None, but got {type(value).__name__}: "
                f"{value!r:.80}; write {kind.__name__}(...)"
                + (f" or {kind.__name__}.from_dict({{...}})" if kind is not MeasureConfig else "")
            )
    if structural is not None:
        from slimkit.transformers.structural import check_prunes_something

        check_prunes_something(structural, None)  # keep_layers naming every layer: after loading
    if sentences is None:
        return None  # the packaged corpus
    sentences = (
        check_calibration_sentences(sentences)
        if int8 is not None
        else _sentence_list(sentences, one_string_ok=False)
    )
    if measure is not None and len(sentences) <= FIDELITY_K:
        raise ConfigError(
            f"measuring fidelity (top-{FIDELITY_K} agreement) needs more than {FIDELITY_K} "
            f"sentences, but got {len(sentences)}; pass more sentences, or measure=None"
        )
    return sentences


def _repath(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` (the staging folder) moved to ``new``."""
    if isinstance(value, dict):
        return {k: _repath(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_repath(v, old, new) for v in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


def _compress_encoder(
    folder: str | os.PathLike[str] | None,
    out: Path,
    int8: EncoderInt8 | None,
    structural: EncoderStructural | None,
    sentences: Sequence[str] | None,
    measure: MeasureConfig | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from slimkit.data import load_corpus
    from slimkit.transformers.embed import embed, sentence_encoder
    from slimkit.transformers.int8 import check_auto_exclude, quantize_encoder
    from slimkit.transformers.loader import load_encoder
    from slimkit.transformers.onnx_export import export_encoder
    from slimkit.transformers.structural import (
        check_keep_layers,
        check_prunes_something,
        compress_structure,
    )

    enc = load_encoder(folder)
    layers = enc.num_layers
    if structural is not None:  # before the fp32 export, not after
        check_prunes_something(structural, enc.num_layers)
        if structural.keep_layers:
            check_keep_layers(structural.keep_layers, enc.num_layers)
            layers = len(structural.keep_layers)
    if int8 is not None:  # before the fp32 export and any distillation
        check_auto_exclude(int8, layers)
    sentences = list(sentences) if sentences is not None else load_corpus()
    module = sentence_encoder(enc)
    tok, max_len = enc.tokenizer, enc.max_length
    heads, hidden = enc.num_heads, enc.hidden_size
    fp32 = export_encoder(
        module,
        tok,
        out / "model_fp32.onnx",
        num_heads=heads,
        hidden_size=hidden,
        max_length=max_len,
        atol=1e-3,
    )
    log(f"fp32 ONNX: {fp32.bytes:,} bytes, parity {fp32.max_abs_diff:.2g}, fused {fp32.fused_ops}")
    metrics: dict[str, Any] = {
        "model": str(enc.folder),
        "sentences": len(sentences),
        "fp32_export": dataclasses.asdict(fp32),
    }
    deployed = module
    if structural is not None:
        deployed, sres = compress_structure(
            module, tok, structural, sentences, max_length=min(max_len, 128), log=log
        )
        metrics["structural"] = {"config": structural.to_dict(), **sres.to_dict()}
        if structural.head_fraction > 0:
            heads, hidden = 0, 0  # let ORT's optimizer read head counts from the graph
    final = out / "model.onnx"
    if int8 is not None:
        res = quantize_encoder(
            deployed,
            tok,
            final,
            int8,
            sentences,
            num_heads=heads,
            hidden_size=hidden,
            max_length=max_len,
            log=log,
        )
        metrics["int8"] = {"config": int8.to_dict(), **res.to_dict()}
    else:
        exp = export_encoder(
            deployed, tok, final, num_heads=heads, hidden_size=hidden, max_length=max_len, atol=1e-3
        )
        metrics["export"] = dataclasses.asdict(exp)
    copied = [name for name in TOKENIZER_FILES if (enc.folder / name).is_file()]
    for name in copied:
        shutil.copyfile(enc.folder / name, out / name)
    # Recorded so that a later run into the same folder (slimkit compress) removes the ones
    # it does not write again: another model's vocab.txt must not sit beside its tokenizer.
    metrics["tokenizer_files"] = copied
    if measure is not None:
        reference = embed(module, tok, sentences, max_length=max_len)
        metrics["measured"] = measure_onnx(
            {"ort_fp32": str(out / "model_fp32.onnx"), "slimkit": str(final)},
            tok,
            sentences,
            reference,
            max_len,
            measure,
        )
    return metrics
