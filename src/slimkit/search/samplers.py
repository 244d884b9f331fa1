"""Strategy name -> Optuna sampler. Every strategy is an Optuna sampler, so all share storage,
resume and parallel workers."""

from __future__ import annotations

import enum
import warnings
from typing import Any

from slimkit.config import parse_enum
from slimkit.errors import ConfigError, import_extra


class SamplerBudgetWarning(UserWarning):
    """The sampler's random warm-up (evolution's ``population``, REINFORCE's ``warmup``) takes
    the whole trial budget: the strategy asked for never chooses a trial."""


class UnguidedParametersWarning(UserWarning):
    """Evolution and REINFORCE guide categorical choices only: float ranges are sampled at
    random (the search is random in those parameters)."""


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


# Evolution's population when the options do not give one: a third of the trial budget, within
# 4..20 (20 is the constructor's default). Every trial before the population is full is random,
# so a population of 20 made a 20-trial search (NASConfig's default) pure random search.
MIN_POPULATION, MAX_POPULATION = 4, 20


def default_population(n_trials: int) -> int:
    """``min(20, max(4, n_trials // 3))``: at least two thirds of a budget of 6 or more evolve."""
    return min(MAX_POPULATION, max(MIN_POPULATION, n_trials // 3))


def resolve_options(
    strategy: str | Strategy, options: dict[str, Any], n_trials: int | None
) -> dict[str, Any]:
    """The sampler options a study runs with: ``options`` plus, for evolution, a population
    derived from the trial budget when none is given (:func:`default_population`) and a
    ``sample_size`` of at most 5 that fits the population when none is given.

    A study records the result when it is created (see study.open_study), so a resume with
    another trial count and every worker keep the population the study started with.
    """
    s = parse_enum(Strategy, strategy, "strategy")
    out = dict(options)
    if s is not Strategy.EVOLUTION:
        return out
    size = out.get("sample_size")
    if "population" not in out and isinstance(n_trials, int):
        population = default_population(n_trials)
        if isinstance(size, int) and not isinstance(size, bool):
            population = max(population, size)  # a given tournament size still fits
        out["population"] = population
    given = out.get("population")
    if size is None and isinstance(given, int) and not isinstance(given, bool):
        out["sample_size"] = max(1, min(5, given))  # 5: the constructor's default
    return out


def warn_if_never_guided(sampler: Any, n_trials: int | None, stacklevel: int = 2) -> None:
    """A SamplerBudgetWarning when ``sampler``'s random warm-up is at least ``n_trials`` trials:
    every trial of the run would be random, whatever the strategy."""
    from slimkit.search.evolution import RegularizedEvolutionSampler
    from slimkit.search.reinforce import ReinforceSampler

    if not isinstance(n_trials, int):
        return
    if isinstance(sampler, RegularizedEvolutionSampler) and sampler.population >= n_trials:
        what, fix = f"population={sampler.population}", f"population <= {max(2, n_trials // 3)}"
    elif isinstance(sampler, ReinforceSampler) and sampler.warmup >= n_trials:
        what, fix = f"warmup={sampler.warmup}", f"warmup <= {max(1, n_trials // 5)}"
    else:
        return
    warnings.warn(
        f"{type(sampler).__name__} samples its first {what} trials at random, but the search "
        f"runs {n_trials} trial(s), so the strategy never chooses one; give {fix} or run more "
        "trials",
        SamplerBudgetWarning,
        stacklevel=stacklevel + 1,
    )
