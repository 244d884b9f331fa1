"""The contract every technique passes, shipped with the package (like optuna.testing).

A technique's test supplies a model, a function that compresses it in place, an example input
and its bounds; :func:`check_contract` then asserts that

1. the model still runs and the output shape holds;
2. the error against the original is within the stated bound (SQNR in dB and/or max |diff|);
3. save -> load (safetensors + JSON, no pickle) reproduces the outputs exactly;
4. ONNX export matches PyTorch within ``onnx_atol``.

It returns the measured figures so a test can assert more or print them.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from slimkit.metrics.fidelity import sqnr_db


@dataclasses.dataclass
class ContractResult:
    sqnr_db: float
    max_abs_diff: float
    roundtrip_max_diff: float
    onnx_max_diff: float | None


@torch.no_grad()
def check_contract(
    model: nn.Module,
    compress: Callable[[nn.Module], object],
    example_input: torch.Tensor,
    *,
    min_sqnr_db: float | None = None,
    max_abs_diff: float | None = None,
    onnx: bool = True,
    onnx_atol: float = 1e-4,
    roundtrip: bool = True,
) -> ContractResult:
    """Compress a deep copy of ``model`` with ``compress`` and assert the contract above."""
    from slimkit import io as slim_io
    from slimkit.export.onnx import export_bytes, parity

    original = copy.deepcopy(model).eval()
    ref = original(example_input)
    target = copy.deepcopy(model).eval()
    with torch.enable_grad():
        result = compress(target)
    compressed = result if isinstance(result, nn.Module) else target
    compressed.eval()
    out = compressed(example_input)
    assert out.shape == ref.shape, f"output shape changed: {tuple(ref.shape)} -> {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "compressed model produced NaN/inf"
    s = sqnr_db(ref, out)
    diff = float((ref - out).abs().max())
    if min_sqnr_db is not None:
        assert s >= min_sqnr_db, f"SQNR {s:.2f} dB below the stated bound {min_sqnr_db} dB"
    if max_abs_diff is not None:
        assert diff <= max_abs_diff, f"max |diff| {diff:.3g} above the stated bound {max_abs_diff}"
    rt = 0.0
    if roundtrip:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.safetensors"
            slim_io.save(compressed, path)
            loaded = slim_io.load(path)
            rt = float((loaded(example_input) - out).abs().max())
            assert rt == 0.0, f"save -> load changed the outputs by {rt:.3g}"
    onnx_diff = None
    if onnx:
        onnx_diff = parity(compressed, export_bytes(compressed, example_input), example_input)
        assert onnx_diff <= onnx_atol, f"ONNX parity {onnx_diff:.3g} above {onnx_atol}"
    return ContractResult(s, diff, rt, onnx_diff)


def tiny_models(image_size: int = 8) -> dict[str, nn.Module]:
    """Every zoo model at a small input size, seeded, for fast contract tests."""
    from slimkit.models import build_model, zoo_names

    torch.manual_seed(0)
    return {n: build_model(n, image_size=image_size).eval() for n in zoo_names()}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so fusion/pruning tests mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model
