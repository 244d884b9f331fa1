"""Shared CLI helpers: load a model from a zoo name or a file, load data, print tables."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def load_model(spec: str, image_size: int | None = None):
    """``spec`` is a zoo name (``lenet5``) or a path to a slimkit file (.safetensors / .slim)."""
    from slimkit import io as slim_io
    from slimkit.models import ZOO, build_model

    if spec in ZOO:
        kwargs = {"image_size": image_size} if image_size else {}
        return build_model(spec, **kwargs)
    path = Path(spec)
    if not path.exists():
        from slimkit.errors import ConfigError

        raise ConfigError(
            f"{spec!r} is neither a zoo model ({sorted(ZOO)}) nor an existing model file"
        )
    return slim_io.load(path)


def refuse_overwrite(inputs: dict[str, str | None], outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output path that is an input file or another output: the run
    would replace the user's model (``distill --out`` = the teacher) or its own first file
    (``prune --sparse-out`` = ``--out``). Keys are how the user named each path ("--teacher",
    "the model"); zoo names and paths that do not exist yet are not inputs to protect."""
    from slimkit.errors import ConfigError

    seen: dict[Path, str] = {}
    named = [(k, Path(v)) for k, v in inputs.items() if v is not None and Path(v).is_file()]
    named += [(k, v) for k, v in outputs.items() if v is not None]
    for label, path in named:
        key = path.resolve()
        if key in seen:
            raise ConfigError(
                f"{label} {str(path)!r} is the same file as {seen[key]}, which the run would "
                f"overwrite; choose another {label} path"
            )
        seen[key] = label


def load_data(name: str, batch_size: int = 64):
    from slimkit.data import load_dataset

    return load_dataset(name, batch_size=batch_size)


def image_size_of(dataset: str) -> int:
    return 8 if dataset == "digits" else 28


def print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(
            c, justify="right" if c not in ("name", "type", "layer", "runner") else "left"
        )
    for r in rows:
        table.add_row(
            *[
                f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                for v in r
            ]
        )
    console.print(table)
