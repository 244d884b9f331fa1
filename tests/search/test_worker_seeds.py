"""Workers joining an hpo study, and a resumed run, sample with fresh entropy: seeded like the
study's first run, each proposed the first run's parameters again (a duplicated trial)."""

import dataclasses

from slimkit.search import hpo
from slimkit.search.hpo import HPOConfig
from slimkit.search.worker import run_worker

# One trial of a random search over lr: a repeated trial shows as an equal lr.
LR_SEARCH = HPOConfig(
    model="lenet300",
    space={"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": [1]},
    n_trials=1,
    max_batches=2,
    strategy="random",
    seed=0,
)


def test_hpo_workers_do_not_repeat_the_first_runs_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    cfg = LR_SEARCH
    study = hpo(cfg, storage=url, study_name="s")
    assert run_worker("s", url, 2).complete == 2
    assert run_worker("s", url, 3).complete == 3
    lrs = [t.params["lr"] for t in study.trials]
    assert len(lrs) == 3 and len(set(lrs)) == 3, lrs


def test_a_resumed_run_does_not_repeat_the_first_runs_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    cfg = LR_SEARCH
    hpo(cfg, storage=url, study_name="s")
    study = hpo(dataclasses.replace(cfg, n_trials=2), storage=url, study_name="s")
    lrs = [t.params["lr"] for t in study.trials]
    assert len(lrs) == 2 and lrs[0] != lrs[1], lrs


def test_a_worker_without_trials_follows_the_latest_runs_count(tmp_path):
    from slimkit.search.study import load_task

    url = f"sqlite:///{tmp_path / 'h.db'}"
    cfg = HPOConfig(
        model="lenet300", space={"epochs": [1]}, n_trials=1, max_batches=2, strategy="random"
    )
    hpo(cfg, storage=url, study_name="s")
    # the rerun asks for 2: the stored count follows (it stayed 1, so a worker with no --trials
    # started beside a `--trials 20` rerun stopped at once)
    hpo(dataclasses.replace(cfg, n_trials=2), storage=url, study_name="s")
    assert load_task("s", url)["config"]["n_trials"] == 2
