"""One measured row per model state: bytes on disk, params, nonzeros, FLOPs, latency, accuracy.

Every later stage reports through :func:`evaluate`; nothing here estimates a number.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import atomic
from slimkit.config import check_threads
from slimkit.errors import ConfigError
from slimkit.metrics.flops import count_flops
from slimkit.metrics.latency import ort_latency, torch_latency
from slimkit.metrics.size import count_nonzeros, count_params, file_bytes


@dataclasses.dataclass
class Measurement:
    params: int
    nonzeros: int
    flops: int  # of one sample (example_input[:1]), the input latency repeats to each batch
    bytes_safetensors: int
    bytes_onnx: int | None = None
    accuracy: float | None = None
    latency: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def latency_ms(self, runner: str = "ort", batch: int = 1) -> float | None:
        for row in self.latency:
            if row["runner"] == runner and row["batch"] == batch:
                return float(row["median_ms"])
        return None


WORKDIR_MARKER = ".slimkit-evaluate"  # a workdir evaluate wrote into: its files are evaluate's


def _check_workdir(folder: Path, with_onnx: bool) -> None:
    """Create ``folder`` (a ConfigError naming a file in the way) and mark it as evaluate's;
    refuse to replace a model.safetensors / model.onnx that evaluate did not write there (no
    marker): it may be the user's own model. Files of an earlier evaluate are replaced."""
    atomic.output_dir(folder)
    names = ["model.safetensors"] + (["model.onnx"] if with_onnx else [])
    taken = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if taken and not (folder / WORKDIR_MARKER).is_file():
        raise ConfigError(
            f"workdir {str(folder)!r} already holds {' and '.join(taken)}, which evaluate did "
            f"not write; evaluate writes {' and '.join(names)} there and would replace it. Pass "
            "a new or empty folder as workdir, or none (a temporary folder is used)"
        )
    atomic.write_text(folder / WORKDIR_MARKER, "model files written by slimkit.evaluate\n")


def evaluate(
    model: nn.Module,
    data=None,
    *,
    example_input: torch.Tensor | None = None,
    batches: tuple[int, ...] = (1, 64),
    runners: tuple[str, ...] = ("torch", "ort"),
    threads: int = 2,
    runs: int = 30,
    workdir: str | os.PathLike[str] | None = None,
) -> Measurement:
    """Measure ``model``: writes it (safetensors, ONNX) and times what it wrote.

    FLOPs are those of one sample (``example_input[:1]``), whatever its batch size: latency
    repeats that sample to each of ``batches``.

    The files go to a temporary folder, or to ``workdir`` (created if missing) as
    model.safetensors and model.onnx; files of those names that an earlier ``evaluate`` did not
    write there are refused, not replaced."""
    from slimkit import io as slim_io
    from slimkit.export.onnx import to_onnx
    from slimkit.preconditions import _probe, check_model
    from slimkit.training import evaluate_accuracy

    check_model(model, "evaluate")
    check_threads(threads)
    unknown = [r for r in runners if r not in ("torch", "ort")]
    if unknown or not runners:
        raise ConfigError(
            f"runners must be a non-empty subset of ['torch', 'ort'], but got {list(runners)}"
        )
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ConfigError(f"batches must be batch sizes >= 1 such as (1, 64), but got {batches!r}")
    if example_input is None:
        if data is None:
            raise ConfigError(
                "evaluate needs data=<DataBundle> or example_input=<one input batch>, but got "
                "neither"
            )
        example_input = data.example_input(1)
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise ConfigError(
            "evaluate needs example_input as a float torch.Tensor of one input batch, e.g. "
            f"torch.randn(1, 1, 28, 28), but got {type(example_input).__name__}"
        )
    _probe(model, example_input.detach(), "evaluate")  # a shape error here, not in count_flops
    if workdir is not None:
        if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
            raise ConfigError(
                f"workdir must be a folder path (or None for a temporary folder), but got "
                f"{workdir!r}"
            )
        _check_workdir(Path(workdir), "ort" in runners)
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp if workdir is None else workdir)
        st_path = folder / "model.safetensors"
        try:
            slim_io.save(model, st_path)
        except ConfigError:  # not a zoo model (no spec to rebuild it from): weights only
            from safetensors.torch import save as st_save

            atomic.write_bytes(st_path, st_save(slim_io.state_tensors(model)))
        m = Measurement(
            params=count_params(model),
            nonzeros=count_nonzeros(model),
            flops=count_flops(model, example_input[:1]),
            bytes_safetensors=file_bytes(st_path),
        )
        onnx_path = folder / "model.onnx"
        if "ort" in runners:
            res = to_onnx(model, onnx_path, example_input)
            m.bytes_onnx = res.bytes
        for b in batches:
            if "torch" in runners:
                m.latency.append(
                    torch_latency(model, example_input, b, threads=threads, runs=runs).to_dict()
                )
            if "ort" in runners:
                m.latency.append(
                    ort_latency(onnx_path, example_input, b, threads=threads, runs=runs).to_dict()
                )
    if data is not None:
        m.accuracy = evaluate_accuracy(model, data.test)
    return m
