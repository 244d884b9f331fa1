"""What slimkit's samplers derive their state from: the study's finished trials, in order.

Our evolution and REINFORCE samplers keep no state of their own between trials: population and
policy are recomputed from the storage every time. So they resume after a crash and share one
study across many worker processes exactly like Optuna's own samplers.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState


def completed(study: Study) -> list[FrozenTrial]:
    """Finished trials ordered by trial number (the order the search produced them)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.number)


def score(study: Study, trial: FrozenTrial) -> float:
    """Larger is better, whatever the study's direction."""
    assert trial.value is not None
    return float(trial.value) if study.direction == StudyDirection.MAXIMIZE else -float(trial.value)


def categorical_space(study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
    """The categorical parameters every finished trial shares (the relative search space)."""
    from optuna.search_space import intersection_search_space

    space = intersection_search_space(completed(study))
    return {n: d for n, d in space.items() if isinstance(d, CategoricalDistribution)}


def trial_rng(seed: int | None, trial: FrozenTrial, salt: int) -> np.random.Generator:
    """A generator that depends only on (seed, trial number): reproducible across workers."""
    base = 0 if seed is None else seed
    return np.random.default_rng([base, trial.number, salt])


def choice_index(dist: CategoricalDistribution, value: Any) -> int:
    return list(dist.choices).index(value)


class ReplaySampler(BaseSampler):
    """Base of slimkit's history-replaying samplers: the relative space is the categorical
    choices finished trials share; anything sampled independently is random, drawn from a
    generator that depends only on (seed, trial number, parameter name)."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._random = RandomSampler(seed=seed)
        # Studies already told which parameters are sampled at random: said once per study
        # (not state the sampling depends on).
        self._warned: set[str] = set()

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        self._raise_error_if_multi_objective(study)
        self._warn_unguided(study)
        return categorical_space(study, trial)

    def _warn_unguided(self, study: Study) -> None:
        """Once per study: the parameters of finished trials that are not categorical (float or
        int ranges), which this sampler draws at random, not by its strategy."""
        if study.study_name in self._warned:
            return
        names = sorted(
            {
                n
                for t in completed(study)
                for n, d in t.distributions.items()
                if not isinstance(d, CategoricalDistribution)
            }
        )
        if not names:
            return
        from slimkit.search.samplers import UnguidedParametersWarning

        self._warned.add(study.study_name)
        warnings.warn(
            f"{type(self).__name__} guides categorical choices only: parameter(s) {names} of "
            f"study {study.study_name!r} are ranges and are sampled at random; give them as "
            "lists of choices to search them, or use strategy tpe",
            UnguidedParametersWarning,
            stacklevel=2,
        )

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if isinstance(param_distribution, CategoricalDistribution):
            rng = trial_rng(self.seed, trial, salt=zlib.crc32(param_name.encode()))
            return param_distribution.choices[int(rng.integers(len(param_distribution.choices)))]
        return self._random.sample_independent(study, trial, param_name, param_distribution)
