"""ONNX export with dynamic batch and a parity check against PyTorch.

Uses the TorchScript-based exporter (``dynamo=False``): on torch 2.13 it is several times
faster than the torch.export path for these small CNNs, needs no onnxscript rewrite passes and
handles every zoo model; the dynamo path is available with ``dynamo=True``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit import atomic
from slimkit.errors import ParityError

DEFAULT_OPSET = 17


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str
    bytes: int
    max_abs_diff: float
    tolerance: float


def export_bytes(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> bytes:
    """Serialise ``model`` to ONNX bytes (input ``input``, output ``output``)."""
    model = model.eval()
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            (example_inputs,),
            buf,  # type: ignore[arg-type]  # file-like objects are accepted
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=dynamo,
            do_constant_folding=True,
        )
    # The tracer runs the model once: a Python `if` on a tensor's values keeps the branch the
    # example took, and parity (which feeds copies of the example) cannot see the other one.
    # torch's own modules (nn.LSTM checks its input sizes) trace such ifs on shapes: only the
    # model's own code counts.
    torch_dir = os.path.dirname(torch.__file__)
    if any(
        "Python boolean" in str(w.message) and not w.filename.startswith(torch_dir) for w in caught
    ):
        warnings.warn(
            "the model's control flow depends on its input values (an `if` on a tensor); the "
            "ONNX graph always takes the branch the example took, so other inputs may give "
            "other results than PyTorch. Make the branch a tensor op (torch.where) to export it",
            ControlFlowWarning,
            stacklevel=3,
        )
    return buf.getvalue()


class ControlFlowWarning(UserWarning):
    """An export traced through value-dependent Python control flow."""


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    check: bool = True,
    dynamo: bool = False,
) -> ExportResult:
    """Export ``model`` to ``path`` atomically and check ORT against PyTorch.

    Raises ParityError when the max |ORT - torch| over the example (and a batch of 3 copies,
    to exercise the dynamic batch) exceeds ``atol``.
    """
    data, diff = checked_export_bytes(
        model, example_inputs, opset=opset, atol=atol, check=check, dynamo=dynamo
    )
    atomic.write_bytes(path, data)
    return ExportResult(str(Path(path)), len(data), diff, atol)


def _expected_input(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape a zoo model was built for, (1, in_channels, image_size, image_size)."""
    import inspect

    from slimkit.models.zoo import ZOO

    arch = getattr(model, "slimkit_arch", None)
    if not isinstance(arch, dict) or arch.get("zoo") not in ZOO:
        return None
    defaults = {
        k: p.default
        for k, p in inspect.signature(ZOO[arch["zoo"]]).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    kw = {**defaults, **(arch.get("kwargs") or {})}
    size, channels = kw.get("image_size"), kw.get("in_channels")
    if not (isinstance(size, int) and isinstance(channels, int)):
        return None
    return (1, channels, size, size)


def _check_example(model: nn.Module, example_inputs: object) -> torch.Tensor:
    """``example_inputs`` is one non-empty float32 batch the model takes (one forward pass, as
    ``check_fits`` does); returned detached, so parity can turn it into numpy."""
    from slimkit.errors import ConfigError
    from slimkit.preconditions import _probe

    expected = _expected_input(model)
    shape = expected or (1, 1, 28, 28)
    like = f"torch.randn{shape}"
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dtype != torch.float32:
        # ONNX Runtime is fed float32 (parity, latency, accuracy): a float64 example would export
        # a float64 graph input, and torch fails on the float32 weights first anyway.
        got = type(example_inputs).__name__
        if isinstance(example_inputs, torch.Tensor):
            got += f" of {str(example_inputs.dtype).removeprefix('torch.')}"
        fix = "convert it with .float()" if isinstance(example_inputs, torch.Tensor) else ""
        raise ConfigError(
            "to_onnx needs example_inputs as a float32 torch.Tensor of one input batch, e.g. "
            f"{like}, but got {got}" + (f"; {fix}" if fix else "")
        )
    if example_inputs.dim() == 0 or example_inputs.shape[0] < 1:
        raise ConfigError(
            "to_onnx needs example_inputs as one input batch of at least 1 sample, e.g. "
            f"{like}, but got shape {tuple(example_inputs.shape)}"
        )
    x = example_inputs.detach()  # requires_grad=True would break parity's x.numpy()
    try:
        _probe(model, x, "to_onnx")
    except ConfigError as exc:
        if expected is None:
            raise
        raise ConfigError(
            f"{exc}; this model was built for inputs of shape (N, {', '.join(map(str, shape[1:]))}"
            f"): pass example_inputs such as {like}"
        ) from None
    return x


def checked_export_bytes(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    check: bool = True,
    dynamo: bool = False,
) -> tuple[bytes, float]:
    """:func:`to_onnx` without the write: (ONNX bytes, max |ORT - torch|), parity checked."""
    from slimkit.preconditions import check_model

    check_model(model, "to_onnx")
    top = 23 if dynamo else 20  # torch's TorchScript exporter stops at 20
    if isinstance(opset, bool) or not isinstance(opset, int) or not 11 <= opset <= top:
        from slimkit.errors import ConfigError

        raise ConfigError(
            f"opset must be an integer in 11..{top}, but got {opset!r}; the default "
            f"{DEFAULT_OPSET} suits ONNX Runtime"
        )
    if check and not (isinstance(atol, (int, float)) and 0 < atol < float("inf")):
        from slimkit.errors import ConfigError

        raise ConfigError(
            f"atol (the parity tolerance) must be a positive number, but got {atol!r}; "
            "pass e.g. --atol 1e-4 (float32 graphs) or 1e-2 (quantized graphs)"
        )
    example_inputs = _check_example(model, example_inputs)
    was_training = model.training  # export and parity run in eval mode; give it back as it came
    try:
        data = export_bytes(model, example_inputs, opset=opset, dynamo=dynamo)
        diff = parity(model, data, example_inputs) if check else float("nan")
    finally:
        model.train(was_training)
    if check and not diff <= atol:
        raise ParityError(
            f"ONNX export disagrees with PyTorch: max |diff| = {diff:.3g} > tolerance {atol:g}. "
            "A custom op or data-dependent control flow may not export; raise atol only if the "
            "difference is expected (e.g. quantized graphs)"
        )
    return data, diff


@torch.no_grad()
def parity(
    model: nn.Module, onnx_model: bytes | str | os.PathLike[str], example_inputs: torch.Tensor
) -> float:
    """Max |ORT - PyTorch| on the example and on a 3x batch of it."""
    from slimkit.export.ort import make_session

    sess = make_session(onnx_model, threads=1)
    example_inputs = example_inputs.detach()  # x.numpy() refuses a tensor that requires grad
    worst = 0.0
    for x in (example_inputs, torch.cat([example_inputs] * 3)):
        ref = model.eval()(x).float().numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            from slimkit.errors import NumericsError

            side = "PyTorch" if not np.isfinite(ref).all() else "ONNX Runtime"
            raise NumericsError(
                f"{side}'s output for the example holds NaN or inf, so parity cannot be checked "
                "and the exported model would be useless; check the weights and the example"
            )
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst
