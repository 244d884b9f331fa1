"""Evolution's random warm-up fits the trial budget. Its population defaulted to 20, and every
trial before the population is full is random, so NAS's default (evolution, 20 trials) was
random search. A study derives the population from its trial count when created, records it,
and a resume or a worker samples with the same; a warm-up that takes the whole budget is said."""

import warnings

import optuna
import pytest

from slimkit.search import SearchSpace
from slimkit.search.evolution import RegularizedEvolutionSampler
from slimkit.search.reinforce import ReinforceSampler
from slimkit.search.samplers import (
    SamplerBudgetWarning,
    UnguidedParametersWarning,
    default_population,
    resolve_options,
)
from slimkit.search.study import open_study, run_until

SPACE = SearchSpace({"a": (0, 1, 2, 3), "b": ("x", "y", "z"), "c": (1, 2)})


def toy(trial) -> float:
    p = SPACE.suggest(trial)
    return p["a"] + {"x": 0, "y": 1, "z": 2}[p["b"]] + p["c"]


def task(n_trials: int, strategy: str = "evolution", **options) -> dict:
    return {
        "kind": "nas",
        "config": {
            "strategy": strategy,
            "n_trials": n_trials,
            "seed": 0,
            "sampler_options": options,
        },
    }


def test_the_default_population_leaves_most_of_the_budget_to_evolution():
    assert [default_population(n) for n in (1, 12, 20, 30, 60, 300)] == [4, 4, 6, 10, 20, 20]
    assert resolve_options("evolution", {}, 20) == {"population": 6, "sample_size": 5}
    assert resolve_options("evolution", {}, 9) == {"population": 4, "sample_size": 4}
    # a given tournament size still fits the derived population; a given population is kept
    assert resolve_options("evolution", {"sample_size": 8}, 20) == {
        "population": 8,
        "sample_size": 8,
    }
    assert resolve_options("evolution", {"population": 3}, 20) == {
        "population": 3,
        "sample_size": 3,
    }
    assert resolve_options("tpe", {}, 20) == {}


def test_a_default_evolution_study_of_20_trials_evolves_after_6(tmp_path):
    study = open_study("s", f"sqlite:///{tmp_path / 's.db'}", ["maximize"], task(20))
    assert isinstance(study.sampler, RegularizedEvolutionSampler)
    assert (study.sampler.population, study.sampler.sample_size) == (6, 5)
    run_until(study, toy, 20)
    seen = [t.params for t in sorted(study.trials, key=lambda t: t.number)]
    # every trial from the 7th on is a one-choice mutation of one of the 6 before it
    for i in range(6, len(seen)):
        assert any(sum(seen[i][k] != p[k] for k in p) == 1 for p in seen[i - 6 : i]), i


def test_resumes_and_workers_keep_the_population_the_study_was_created_with(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = open_study("s", url, ["maximize"], task(12))
    assert first.sampler.population == 4
    run_until(first, toy, 5)
    # a resume asking for 60 trials (derived alone: 20), and a worker that reads the task
    resumed = open_study("s", url, ["maximize"], task(60))
    assert resumed.sampler.population == 4
    worker = open_study("s", url, ["maximize"], resumed.user_attrs["slimkit_task"], fresh_seed=True)
    assert (worker.sampler.population, worker.sampler.sample_size) == (4, 4)


def test_a_study_of_another_task_replaced_derives_its_own(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    old = open_study("s", url, ["maximize"], task(12))

    def fail(trial):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        old.optimize(fail, n_trials=1)
    with pytest.warns(UserWarning, match="replaced it by this task"):
        new = open_study("s", url, ["maximize"], task(30, sample_size=2))
    assert (new.sampler.population, new.sampler.sample_size) == (10, 2)


def test_a_warm_up_that_takes_the_whole_budget_is_said(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.warns(SamplerBudgetWarning, match=r"population=20 .* runs 20 trial"):
        open_study("a", url, ["maximize"], task(20, population=20))
    with pytest.warns(SamplerBudgetWarning, match=r"warmup=8 .* runs 5 trial"):
        open_study("b", url, ["maximize"], task(5, "reinforce", warmup=8))
    with pytest.warns(SamplerBudgetWarning, match="population=20"):  # the caller's sampler
        open_study("c", url, ["maximize"], task(10), sampler=RegularizedEvolutionSampler())
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplerBudgetWarning)
        open_study("d", url, ["maximize"], task(20, population=5))
        open_study("e", url, ["maximize"], task(3))  # derived: the budget is the user's choice
        open_study("f", url, ["maximize"], task(20, "reinforce"))


@pytest.mark.parametrize("sampler_class", [RegularizedEvolutionSampler, ReinforceSampler])
def test_ranges_sampled_at_random_are_named_once_per_study(sampler_class):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler_class(seed=0))

    def objective(trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        width = trial.suggest_int("width", 8, 64)
        return trial.suggest_categorical("a", [0, 1]) + lr + width

    with pytest.warns(UnguidedParametersWarning) as caught:
        study.optimize(objective, n_trials=6)
    said = [w for w in caught if issubclass(w.category, UnguidedParametersWarning)]
    assert len(said) == 1
    assert "['lr', 'width']" in str(said[0].message) and "'a'" not in str(said[0].message)
