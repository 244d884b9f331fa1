"""Fidelity of a compressed model's outputs against a reference: cosine, max |diff|, SQNR (dB)."""

from __future__ import annotations

import dataclasses
import math

import torch


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10*log10(|ref|^2 / |ref - approx|^2) in dB.

    Identical tensors give +inf; torchao asserts > 35 dB for good int8.
    """
    ref = reference.detach().double().flatten()
    noise = (ref - approx.detach().double().flatten()).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return float(10 * torch.log10(signal / noise))


@dataclasses.dataclass(frozen=True)
class Fidelity:
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float
    sqnr_db: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare_outputs(reference: torch.Tensor, approx: torch.Tensor) -> Fidelity:
    """Compare two ``(N, D)`` output batches row by row."""
    ref = reference.detach().float().reshape(len(reference), -1)
    out = approx.detach().float().reshape(len(approx), -1)
    cos = torch.nn.functional.cosine_similarity(ref, out, dim=1, eps=1e-12)
    agree = float((ref.argmax(1) == out.argmax(1)).float().mean()) if ref.shape[1] > 1 else 1.0
    return Fidelity(
        float(cos.mean()),
        float(cos.min()),
        float((ref - out).abs().max()),
        sqnr_db(ref, out),
        agree,
    )


@torch.no_grad()
def model_fidelity(reference_model, model, loader, max_batches: int | None = None) -> Fidelity:
    """Fidelity of ``model`` against ``reference_model`` on the inputs of ``loader``."""
    from slimkit.errors import ConfigError

    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ConfigError(
            f"max_batches must be None (the whole loader) or at least 1, but got {max_batches!r}"
        )
    refs, outs = [], []
    for i, (x, _) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        refs.append(reference_model.eval()(x).float())
        outs.append(model.eval()(x).float())
    if sum(len(r) for r in refs) == 0:
        raise ConfigError(
            "cannot compare outputs on an empty loader (0 samples); pass a non-empty one"
        )
    return compare_outputs(torch.cat(refs), torch.cat(outs))
