"""Strategy name -> Optuna sampler. Every strategy is an Optuna sampler, so all share storage,
resume and parallel workers."""

from __future__ import annotations

import enum
from typing import Any

from slimkit.config import parse_enum
from slimkit.errors import ConfigError, import_extra


class Strategy(str, enum.Enum):
    RANDOM = "random"
    EVOLUTION = "evolution"
    REINFORCE = "reinforce"
    TPE = "tpe"
    NSGA2 = "nsga2"


def _sampler_class(s: Strategy):
    optuna = import_extra("optuna", "search")
    from slimkit.search.evolution import RegularizedEvolutionSampler
    from slimkit.search.reinforce import ReinforceSampler

    return {
        Strategy.RANDOM: optuna.samplers.RandomSampler,
        Strategy.EVOLUTION: RegularizedEvolutionSampler,
        Strategy.REINFORCE: ReinforceSampler,
        Strategy.TPE: optuna.samplers.TPESampler,
    }.get(s, optuna.samplers.NSGAIISampler)


def check_sampler_options(strategy: str | Strategy, options: Any) -> None:
    """``options`` must be a mapping of the strategy's sampler constructor arguments (an unknown
    one raised TypeError inside the study; the random sampler ignored any)."""
    import inspect

    s = parse_enum(Strategy, strategy, "strategy")
    if not isinstance(options, dict):
        raise ConfigError(
            f"sampler_options must be a mapping of sampler arguments, but got {options!r}"
        )
    params = inspect.signature(_sampler_class(s)).parameters
    valid = sorted(k for k in params if k not in ("self", "seed") and not k.startswith("_"))
    bad = [k for k in options if k not in valid]
    if bad:
        raise ConfigError(
            f"sampler_options {bad} are not options of the {s.value} sampler; valid: {valid}"
        )


def make_sampler(strategy: str | Strategy, seed: int | None = None, **options: Any):
    """Build the sampler for ``strategy`` (options go to its constructor)."""
    optuna = import_extra("optuna", "search")
    from slimkit.search.evolution import RegularizedEvolutionSampler
    from slimkit.search.reinforce import ReinforceSampler

    s = parse_enum(Strategy, strategy, "strategy")
    check_sampler_options(s, options)
    if s is Strategy.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if s is Strategy.EVOLUTION:
        return RegularizedEvolutionSampler(seed=seed, **options)
    if s is Strategy.REINFORCE:
        return ReinforceSampler(seed=seed, **options)
    if s is Strategy.TPE:
        return optuna.samplers.TPESampler(seed=seed, **options)
    return optuna.samplers.NSGAIISampler(seed=seed, **options)
