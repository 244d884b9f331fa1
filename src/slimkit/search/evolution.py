"""Regularized (aging) evolution as an Optuna sampler (Real et al. 2019, "AmoebaNet").

Population = the ``population`` most recently finished trials (the oldest die: aging).
Each new trial: draw ``sample_size`` members at random (tournament), take the best as parent,
copy its choices and mutate one of them to a different option. Until the population is full,
trials are sampled at random: a study built from a task (nas, hpo) without a ``population`` option
sizes it to the trial budget (:func:`slimkit.search.samplers.default_population`), and one whose
population takes the whole budget is said (SamplerBudgetWarning).
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial

from slimkit.config import check_int
from slimkit.errors import ConfigError
from slimkit.search.history import ReplaySampler, completed, score, trial_rng


class RegularizedEvolutionSampler(ReplaySampler):
    def __init__(self, population: int = 20, sample_size: int = 5, seed: int | None = None) -> None:
        check_int("population", population, 2, 100_000)
        check_int("sample_size", sample_size, 1, 100_000)
        if sample_size > population:
            raise ConfigError(
                f"sample_size must be <= population, but got sample_size={sample_size}, "
                f"population={population}"
            )
        self.population = population
        self.sample_size = sample_size
        super().__init__(seed)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        done = completed(study)
        if not search_space or len(done) < self.population:
            return {}
        rng = trial_rng(self.seed, trial, salt=1)
        alive = done[-self.population :]  # aging: only the newest survive
        picks = rng.choice(len(alive), size=self.sample_size, replace=False)
        parent = max((alive[int(i)] for i in picks), key=lambda t: score(study, t))
        mutable = [n for n, d in search_space.items() if len(d.choices) > 1]  # type: ignore[attr-defined]
        seen = {
            tuple(sorted(t.params.items()))
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
        }
        child = {n: parent.params[n] for n in search_space}
        # Mutate one choice; in a small space prefer a child nobody has evaluated yet
        # (re-measuring a known architecture wastes budget), trying a few times.
        for _ in range(10):
            child = {n: parent.params[n] for n in search_space}
            if mutable:
                name = mutable[int(rng.integers(len(mutable)))]
                dist = search_space[name]
                assert isinstance(dist, CategoricalDistribution)
                others = [c for c in dist.choices if c != child[name]]
                child[name] = others[int(rng.integers(len(others)))]
            if tuple(sorted(child.items())) not in seen:
                break
        return child
