"""Shared CLI helpers: load a model from a zoo name or a file, load data, print tables."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


IMAGE_SIZES = (4, 256)  # the zoo's input sides that make sense (digits is 8, MNIST 28)


def load_model(spec: str, image_size: int | None = None, seed: int | None = None):
    """``spec`` is a zoo name (``lenet5``) or a path to a slimkit file (.safetensors / .slim).

    ``seed`` sets a zoo model's initial weights (a command's ``--seed``; None: torch's global
    random state); a file's weights are its own."""
    from slimkit import io as slim_io
    from slimkit.errors import ConfigError
    from slimkit.models import ZOO, build_model

    if spec in ZOO:
        if image_size is not None:
            lo, hi = IMAGE_SIZES
            if not lo <= image_size <= hi:
                raise ConfigError(
                    f"--image-size must be in {lo}..{hi} pixels, but got {image_size}; "
                    "pass the side of your images (28 for mnist5k, 8 for digits)"
                )
        kwargs = {"image_size": image_size} if image_size else {}
        model = build_model(spec, seed=seed, **kwargs)
        _probe(model, spec, input_side(model))
        return model
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"{spec!r} is neither a zoo model ({sorted(ZOO)}) nor an existing model file"
        )
    return slim_io.load(path)


def input_side(model) -> int:
    """The square input side a zoo-built model takes (its builders default to 28)."""
    return int(getattr(model, "slimkit_arch", {}).get("kwargs", {}).get("image_size", 28))


def _probe(model, spec: str, side: int) -> None:
    """One forward pass on zeros: a zoo model too small for its input side fails here, with
    a message, instead of deep inside the command's first batch."""
    import torch

    from slimkit.errors import ConfigError

    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, side, side))
    except RuntimeError as exc:
        raise ConfigError(
            f"zoo model {spec!r} cannot take {side}x{side} images ({str(exc).splitlines()[0]}); "
            "pass a larger --image-size or another zoo model"
        ) from None
    model.train()


def load_model_for(
    spec: str,
    dataset: str,
    flag: str = "the model",
    seed: int | None = None,
    data_flag: str = "--dataset",
):
    """:func:`load_model` for a command that feeds it ``dataset``: a model file built for
    another image size is refused up front (``eval m.safetensors --dataset digits`` on an
    MNIST model), instead of failing in torch's first matmul. ``seed``: see :func:`load_model`.
    ``data_flag``: the command's option that named the dataset (``quantize`` has ``--data``)."""
    from slimkit.errors import ConfigError

    want = image_size_of(dataset)
    model = load_model(spec, want, seed)
    side = input_side(model)
    if side != want:
        other = [d for d in ("mnist5k", "digits") if image_size_of(d) == side]
        hint = f"pass {data_flag} {other[0]}, or " if other else ""
        raise ConfigError(
            f"{flag} {spec!r} takes {side}x{side} images, but {data_flag} {dataset} gives "
            f"{want}x{want}; {hint}train a model for {dataset} first "
            f"(slimkit train lenet5 --dataset {dataset})"
        )
    return model


def refuse_overwrite(
    inputs: dict[str, str | None],
    outputs: dict[str, Path | None],
    model_file: str | None = None,
) -> None:
    """Refuse, before any work, an output path that is an input file or another output: the run
    would replace the user's model (``distill --out`` = the teacher) or its own first file
    (``prune --sparse-out`` = ``--out``). Keys are how the user named each path ("--teacher",
    "the model"); zoo names and paths that do not exist yet are not inputs to protect. An output
    that could not be written at all (a folder, a file in the way) is refused here too, not
    after the training it would have saved. ``model_file``: the output key that names a slimkit
    model file (safetensors), whose suffix must not promise another format."""
    from slimkit.atomic import check_writable
    from slimkit.errors import ConfigError
    from slimkit.io import check_save_suffix

    for path in outputs.values():
        if path is not None:
            check_writable(path)
    named_model = outputs.get(model_file) if model_file is not None else None
    if named_model is not None:
        check_save_suffix(named_model)  # `--out q.slim` wrote safetensors under that name

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
    """The image side of a packaged dataset; an unknown name is refused (it meant 28x28, so
    ``decompose lenet5 --dataset digit`` wrote a model for MNIST's images)."""
    from slimkit.data import dataset_names
    from slimkit.errors import ConfigError

    if dataset not in dataset_names():
        raise ConfigError(
            f"unknown dataset {dataset!r} for --dataset; valid names are {dataset_names()}"
        )
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
