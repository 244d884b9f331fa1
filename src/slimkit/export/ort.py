"""ONNX Runtime sessions: the checker runs first, external data must stay in the model's folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from slimkit.config import check_threads
from slimkit.errors import ConfigError, SlimkitError, UnsafeFileError


def check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Refuse external-data locations that are absolute, climb out with '..', or are symlinks."""
    root = folder.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
        p = Path(loc)
        target = folder / p
        if (
            p.is_absolute()
            or ".." in p.parts
            or target.is_symlink()
            or not target.resolve().is_relative_to(root)
        ):
            raise UnsafeFileError(
                f"ONNX tensor {tensor.name!r} points its external data at {loc!r}, outside the "
                f"model's folder {root}; only plain relative files inside that folder are allowed"
            )


def refuse_external_data(model: onnx.ModelProto) -> None:
    """ONNX given as bytes has no folder of its own: ONNX Runtime would look for any external
    data file (absolute, '..' or relative to the working folder) wherever its location points,
    so bytes must hold all their weights."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise UnsafeFileError(
                f"ONNX tensor {tensor.name!r} of the ONNX bytes given points its external data "
                f"at {loc!r}; bytes have no model folder to keep it in, so external data is "
                "refused there. Pass the path of the .onnx file (with its data files beside it) "
                "instead"
            )


def _parse(load, what: str) -> onnx.ModelProto:
    """Run ``load``; a file that is not an ONNX protobuf is a ConfigError naming it, not
    protobuf's DecodeError."""
    from google.protobuf.message import DecodeError

    try:
        return load()
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"{what} is not a readable ONNX model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); pass a file written by "
            "`slimkit export` or another ONNX exporter"
        ) from None


def load_checked(source: bytes | str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model without external data, check paths, then run the ONNX checker."""
    if isinstance(source, bytes):
        model = _parse(lambda: onnx.load_from_string(source), "the ONNX bytes given")
        refuse_external_data(model)
    else:
        path = Path(source)
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not an existing file"
            raise ConfigError(f"ONNX model {str(path)!r} is {what}; pass the path of an .onnx file")
        model = _parse(lambda: onnx.load(str(path), load_external_data=False), repr(str(path)))
        folder = path.parent
        check_external_data(model, folder)
        onnx.load_external_data_for_model(model, str(folder))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise SlimkitError(f"ONNX model failed the checker: {str(exc).splitlines()[0]}") from None
    return model


OPTIMIZATIONS = ("none", "basic", "extended", "all")  # ONNX Runtime graph optimization levels


def make_session(
    source: bytes | str | os.PathLike[str], *, threads: int = 2, optimization: str = "all"
):
    """An InferenceSession on CPU with ``threads`` intra-op threads, after the checks above."""
    import onnxruntime as ort

    check_threads(threads)  # ORT reads 0 as its default pool (every core)
    if not isinstance(optimization, str) or optimization not in OPTIMIZATIONS:
        raise ConfigError(
            f"optimization must be one of {list(OPTIMIZATIONS)}, but got {optimization!r}"
        )
    model = load_checked(source)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
