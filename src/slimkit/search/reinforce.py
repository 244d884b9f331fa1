"""A REINFORCE controller as an Optuna sampler (Williams 1992; Zoph & Le 2017, simplified).

Policy: independent softmax logits per categorical choice. Reward: the trial's value (negated
when minimising). After each finished trial, in trial-number order,
``baseline <- decay * baseline + (1 - decay) * reward`` and the logits take a policy-gradient
step ``lr * (reward - baseline) * d log pi(choice) / d logits``. The policy is replayed from
the stored trials before each sample, so the controller resumes and parallelises through the
study's storage like any Optuna sampler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial

from slimkit.config import check_int, check_range
from slimkit.search.history import ReplaySampler, choice_index, completed, score, trial_rng


class ReinforceSampler(ReplaySampler):
    def __init__(
        self,
        lr: float = 0.5,
        baseline_decay: float = 0.8,
        warmup: int = 4,
        seed: int | None = None,
    ) -> None:
        check_range("lr", lr, 0.0, 100.0, low_open=True)
        check_range("baseline_decay", baseline_decay, 0.0, 1.0, high_open=True)
        check_int("warmup", warmup, 0, 100_000)  # random trials before the policy samples
        self.lr = lr
        self.baseline_decay = baseline_decay
        self.warmup = warmup
        super().__init__(seed)

    def policy(self, study: Study, space: dict[str, BaseDistribution]) -> dict[str, np.ndarray]:
        """Replay finished trials into softmax logits per choice: {name: (n_options,)}."""
        logits = {n: np.zeros(len(d.choices)) for n, d in space.items()}  # type: ignore[attr-defined]
        trials = completed(study)
        if not trials:
            return logits
        rewards = np.array([score(study, t) for t in trials])
        # Rewards are standardised by their running spread so lr means the same for any metric.
        scale = float(rewards.std()) or 1.0
        baseline = float(rewards[0])
        for t, r in zip(trials, rewards, strict=True):
            advantage = (r - baseline) / scale
            for name, dist in space.items():
                assert isinstance(dist, CategoricalDistribution)
                if name not in t.params:
                    continue
                p = _softmax(logits[name])
                grad = -p
                grad[choice_index(dist, t.params[name])] += 1.0  # d log softmax / d logits
                logits[name] += self.lr * advantage * grad
            baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * r
        return logits

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or len(completed(study)) < self.warmup:
            return {}
        rng = trial_rng(self.seed, trial, salt=2)
        out: dict[str, Any] = {}
        for name, logit in self.policy(study, search_space).items():
            dist = search_space[name]
            assert isinstance(dist, CategoricalDistribution)
            out[name] = dist.choices[int(rng.choice(len(logit), p=_softmax(logit)))]
        return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()
