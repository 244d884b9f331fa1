"""First-order Taylor (gradient sensitivity) unstructured pruning.

Importance of weight w is |w * dL/dw| (Molchanov et al. 2017/2019), the first-order estimate of
the loss change when w is set to zero, summed over calibration batches:
``score = sum_b |w * g_b|``. Weights with the lowest score are pruned.

``sk.prune_(model, TaylorPruning(sparsity=0.9), data=bundle_or_loader)``; the structured
engineer's channel-level criterion lives in ``criteria.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import check_int
from slimkit.errors import ConfigError, NumericsError
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.magnitude import UnstructuredPruning, prune_by_scores
from slimkit.pruning.masks import weight_of

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TaylorPruning(UnstructuredPruning):
    """Prune the weights with the smallest accumulated |w * dL/dw| over ``batches`` batches."""

    batches: int = 8

    def validate(self) -> None:
        super().validate()
        check_int("batches", self.batches, 1, 10**6)


def calibration_loader(data: Any) -> Iterable[Any]:
    """A DataBundle's ``calib`` loader, or ``data`` itself if it is an iterable of (x, y)."""
    if data is None:
        raise ConfigError(
            "this pruning criterion needs calibration data, but got data=None; pass "
            "data=<DataBundle or DataLoader of (x, y)> to prune_"
        )
    calib = getattr(data, "calib", None)
    return calib if calib is not None else data


def taylor_scores(
    model: nn.Module,
    layers: dict[str, nn.Module],
    data: Any,
    batches: int = 8,
    loss_fn: LossFn | None = None,
) -> dict[str, torch.Tensor]:
    """``{layer name: sum over batches of |w * dL/dw|}``, shape of each weight.

    Gradients come from ``torch.autograd.grad`` so the model's ``.grad`` fields are untouched;
    the model runs in eval mode (BatchNorm statistics do not move) and its mode is restored.
    """
    loader = calibration_loader(data)
    was_training = model.training
    model.eval()
    weights = [weight_of(m) for m in layers.values()]
    scores = {n: torch.zeros_like(weight_of(m), dtype=torch.float32) for n, m in layers.items()}
    seen = 0
    try:
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            with torch.enable_grad():
                logits = model(x)
                loss = loss_fn(model, x, y, logits) if loss_fn else F.cross_entropy(logits, y)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for (n, m), g in zip(layers.items(), grads, strict=True):
                if g is not None:
                    scores[n] += (weight_of(m).detach() * g).abs().float()
            seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ConfigError(
            "calibration data yielded no batches; Taylor importance needs at least one"
        )
    for n, s in scores.items():
        if not torch.isfinite(s).all():
            raise NumericsError(
                f"Taylor importance of layer {n!r} is not finite (NaN/inf gradients)"
            )
    return scores


@PRUNERS.register(TaylorPruning)
def _prune_taylor(
    model: nn.Module,
    config: TaylorPruning,
    *,
    data: Any = None,
    loss_fn: LossFn | None = None,
    **_: object,
) -> nn.Module:
    calibration_loader(data)  # fail before any work when data is missing

    def score(m: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        return taylor_scores(m, layers, data, config.batches, loss_fn)

    prune_by_scores(model, config, score)
    return model
