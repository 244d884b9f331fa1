"""Unstructured magnitude pruning (Han et al. 2015): zero the smallest |w|, layer-wise or global.

``sk.prune_(model, MagnitudePruning(sparsity=0.9, scope="global"))`` installs masks (see
:mod:`slimkit.pruning.masks`) so fine-tuning cannot regrow pruned weights; call
``finalize_(model)`` at the end to fold them into real zeros. Biases are never pruned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from slimkit.config import SlimConfig, check_range, parse_enum, select_modules
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.masks import Scope, apply_masks, masks_from_scores, weight_of

# Layer name -> score tensor of the weight's shape (higher = more important).
ScoreFn = Callable[[nn.Module, dict[str, nn.Module]], dict[str, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class UnstructuredPruning(SlimConfig):
    """Fields every unstructured pruner shares (not registered itself)."""

    sparsity: float = 0.5
    scope: Scope = Scope.LAYER
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_open=True)
        object.__setattr__(self, "scope", parse_enum(Scope, self.scope, "scope"))


def select_layers(model: nn.Module, cfg: UnstructuredPruning) -> dict[str, nn.Module]:
    """Linear/Conv2d layers chosen by ``cfg.targets``/``cfg.ignore`` (TargetError on no match)."""
    return select_modules(model, cfg.targets, cfg.ignore, types=(nn.Linear, nn.Conv2d))


def prune_by_scores(
    model: nn.Module, cfg: UnstructuredPruning, score_fn: ScoreFn
) -> dict[str, torch.Tensor]:
    """Score the chosen layers, prune the lowest scores to ``cfg.sparsity`` and install masks."""
    layers = select_layers(model, cfg)
    scores = score_fn(model, layers)
    masks = masks_from_scores(scores, cfg.sparsity, cfg.scope, model=model)
    apply_masks(model, masks)
    return masks


def magnitude_scores(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {n: weight_of(m).detach().abs() for n, m in layers.items()}


@dataclasses.dataclass(frozen=True)
class MagnitudePruning(UnstructuredPruning):
    """Prune the ``sparsity`` fraction of weights with the smallest |w|."""


@PRUNERS.register(MagnitudePruning)
def _prune_magnitude(model: nn.Module, config: MagnitudePruning, **_: object) -> nn.Module:
    prune_by_scores(model, config, magnitude_scores)
    return model
