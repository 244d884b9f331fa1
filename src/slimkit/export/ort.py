"""ONNX Runtime sessions: the checker runs first, external data must stay in the model's folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from slimkit.errors import SlimkitError, UnsafeFileError


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


def load_checked(source: bytes | str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model without external data, check paths, then run the ONNX checker."""
    if isinstance(source, bytes):
        model = onnx.load_from_string(source)
        folder = Path.cwd()
    else:
        path = Path(source)
        model = onnx.load(str(path), load_external_data=False)
        folder = path.parent
        check_external_data(model, folder)
        onnx.load_external_data_for_model(model, str(folder))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise SlimkitError(f"ONNX model failed the checker: {str(exc).splitlines()[0]}") from None
    return model


def make_session(
    source: bytes | str | os.PathLike[str], *, threads: int = 2, optimization: str = "all"
):
    """An InferenceSession on CPU with ``threads`` intra-op threads, after the checks above."""
    import onnxruntime as ort

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
