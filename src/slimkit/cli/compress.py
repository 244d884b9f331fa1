"""`slimkit compress RECIPE --out DIR [--resume] [--set key.path=value ...]`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from slimkit.cli.common import console

COLUMNS = [
    "#",
    "stage",
    "method",
    "accuracy",
    ".slim bytes",
    "bits/w",
    "params",
    "nonzeros",
    "FLOPs",
    "ORT ms",
]


def stage_rows(rows):
    out = []
    for r in rows:
        acc = r.get("accuracy")
        out.append(
            [
                r["index"],
                r["stage"],
                r.get("method") or "",
                "-" if acc is None else f"{100 * acc:.2f}%",
                r["bytes_slim"] if r.get("bytes_slim") is not None else "-",
                "-" if r.get("bits_per_weight") is None else f"{r['bits_per_weight']:.3f}",
                r["params"],
                r["nonzeros"],
                r["flops"],
                "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}",
            ]
        )
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def compress(
        recipe: Path = typer.Argument(..., help="YAML recipe (see examples/)"),
        out: Path = typer.Option(
            ..., "--out", help="output folder (checkpoints, artifacts, report)"
        ),
        resume: bool = typer.Option(
            False, "--resume", help="continue after the last finished stage"
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="override a recipe key: data.train_samples=500"
        ),
    ):
        """Run a compression recipe stage by stage; writes artifacts, metrics.json and report.html."""
        from slimkit.errors import AccuracyGateError
        from slimkit.pipeline import compress as run
        from slimkit.pipeline import load_recipe

        # Validate everything before writing anything.
        r = load_recipe(recipe, overrides=list(set_))
        try:
            result = run(r, out, resume=resume, log=lambda s: console.print(s))
        except KeyboardInterrupt:
            from slimkit.pipeline.hf_stage import is_hf_recipe

            # The same recipe file and --set overrides: without them the digest differs and
            # --resume is refused. Quoted for a POSIX shell (paths with spaces).
            again = command_line(recipe, out, set_)
            if is_hf_recipe(r):  # one stage: nothing is kept to resume from
                message = (
                    f"interrupted; an hf_compress run is one stage and kept nothing of this run in "
                    f"{out}. Run it again with: {again}"
                )
            else:
                message = (
                    f"interrupted; finished stages are checkpointed in {out}. Continue with: "
                    f"{again} --resume"
                )
            # One line, printed as is: rich would wrap it and read "[...]" in a path as markup.
            console.print(message, soft_wrap=True, markup=False, highlight=False)
            raise typer.Exit(130) from None
        except AccuracyGateError:
            metrics_path = out / "metrics.json"
            if metrics_path.exists():
                import json

                _print(json.loads(metrics_path.read_text())["rows"], out)
                console.print(f"report (marked failing): {(out / 'report.html').resolve()}")
            raise
        if result.report is None:  # a non-zero torchrun rank
            return
        _print(result.rows, out)
        ratio = result.metrics.get("compression_ratio")
        of = result.metrics.get("compression_ratio_of")
        console.print(
            f"compression ratio {'-' if ratio is None else f'{ratio:.1f}x'} "  # None: not measured
            f"(dense fp32 {result.metrics['dense_fp32_bytes']:,} B"
            + (f" / {of}" if of else "")
            + ")",
            markup=False,
        )
        console.print(f"report: {result.report.resolve()}")


def command_line(recipe: Path, out: Path, overrides: list[str]) -> str:
    """``slimkit compress RECIPE --out DIR [--set K=V ...]``, each argument shell-quoted."""
    import shlex

    args = ["slimkit", "compress", str(recipe), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args)


def _print(rows, out: Path) -> None:
    if not rows:  # an hf_compress run has no per-stage model rows; it printed its variants
        return
    table = Table(title="stages (measured on the files written)")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("stage", "method") else "right")
    for r in stage_rows(rows):
        table.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in r])
    Console(width=max(console.width, 130)).print(table)
