"""Random unstructured pruning: the baseline every criterion must beat.

Scores are seeded uniform noise, so the same config prunes the same weights on every run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from slimkit.config import check_int
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.magnitude import UnstructuredPruning, prune_by_scores
from slimkit.pruning.masks import weight_of


@dataclasses.dataclass(frozen=True)
class RandomPruning(UnstructuredPruning):
    """Prune a uniformly random ``sparsity`` fraction of weights (seeded)."""

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("seed", self.seed, 0, 2**63 - 1)


def random_scores(seed: int):
    def score(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        # NumPy's PCG64, not torch's generator: torch.manual_seed(s) before building the model
        # would otherwise make the "random" scores the very numbers the weights were drawn from.
        rng = np.random.default_rng(seed)
        return {
            n: torch.from_numpy(rng.random(tuple(weight_of(m).shape))) for n, m in layers.items()
        }

    return score


@PRUNERS.register(RandomPruning)
def _prune_random(model: nn.Module, config: RandomPruning, **_: object) -> nn.Module:
    prune_by_scores(model, config, random_scores(config.seed))
    return model
