"""Random unstructured pruning: the baseline every criterion must beat.

Scores are seeded uniform noise, so the same config prunes the same weights on every run.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from slimkit.config import check_int
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.magnitude import UnstructuredPruning, prune_by_scores


@dataclasses.dataclass(frozen=True)
class RandomPruning(UnstructuredPruning):
    """Prune a uniformly random ``sparsity`` fraction of weights (seeded)."""

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("seed", self.seed, 0, 2**63 - 1)


def random_scores(seed: int):
    def score(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(m.weight.shape, generator=gen) for n, m in layers.items()}

    return score


@PRUNERS.register(RandomPruning)
def _prune_random(model: nn.Module, config: RandomPruning, **_: object) -> nn.Module:
    prune_by_scores(model, config, random_scores(config.seed))
    return model
