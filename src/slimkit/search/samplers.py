"""Strategy name -> Optuna sampler. Every strategy is an Optuna sampler, so all share storage,
resume and parallel workers."""

from __future__ import annotations

import enum
from typing import Any

from slimkit.config import parse_enum
from slimkit.errors import import_extra


class Strategy(str, enum.Enum):
    RANDOM = "random"
    EVOLUTION = "evolution"
    REINFORCE = "reinforce"
    TPE = "tpe"
    NSGA2 = "nsga2"


def make_sampler(strategy: str | Strategy, seed: int | None = None, **options: Any):
    """Build the sampler for ``strategy`` (options go to its constructor)."""
    optuna = import_extra("optuna", "search")
    from slimkit.search.evolution import RegularizedEvolutionSampler
    from slimkit.search.reinforce import ReinforceSampler

    s = parse_enum(Strategy, strategy, "strategy")
    if s is Strategy.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if s is Strategy.EVOLUTION:
        return RegularizedEvolutionSampler(seed=seed, **options)
    if s is Strategy.REINFORCE:
        return ReinforceSampler(seed=seed, **options)
    if s is Strategy.TPE:
        return optuna.samplers.TPESampler(seed=seed, **options)
    return optuna.samplers.NSGAIISampler(seed=seed, **options)
