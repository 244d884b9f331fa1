"""`slimkit search worker`: join a stored study and run trials until it has its trial count.

The study's task JSON (written when it was created) says what to run, so N workers started
anywhere with the same storage URL and study name share the work with no duplicated trial.
"""

from __future__ import annotations

from slimkit.errors import ConfigError


def run_worker(
    study_name: str, storage: str | None, n_trials: int | None = None, *, heartbeat: int = 10
) -> int:
    """Run trials of a stored study; returns the number of finished trials afterwards.

    A study (or database) that does not exist is a ConfigError, and nothing is created.
    """
    from slimkit.config import check_int
    from slimkit.search.hpo import HPOConfig, make_pruner
    from slimkit.search.hpo import make_objective as hpo_objective
    from slimkit.search.nas import NASConfig, directions
    from slimkit.search.nas import make_objective as nas_objective
    from slimkit.search.spaces import SearchSpace
    from slimkit.search.storage import make_storage
    from slimkit.search.study import load_task, open_study, run_until

    if n_trials is not None:
        check_int("trials", n_trials, 1, 100_000)
    check_int("heartbeat", heartbeat, 1, 3600)
    task = load_task(study_name, storage)
    storage_obj = make_storage(storage, heartbeat_interval=heartbeat)
    kind = task.get("kind")
    if kind == "nas":
        cfg = NASConfig.from_dict(task["config"])
        space = SearchSpace(task["space"])
        from slimkit.data import load_dataset

        study = open_study(study_name, storage_obj, directions(cfg), task)
        objective = nas_objective(space, load_dataset(cfg.dataset), cfg)
        total = n_trials or cfg.n_trials
    elif kind == "hpo":
        hcfg = HPOConfig.from_dict(task["config"])
        dirs = ["maximize"] if len(hcfg.objectives) == 1 else ["maximize", "minimize"]
        study = open_study(study_name, storage_obj, dirs, task, pruner=make_pruner(hcfg.pruner))
        objective = hpo_objective(hcfg)
        total = n_trials or hcfg.n_trials
    else:
        raise ConfigError(
            f"study {study_name!r} holds an unknown task kind {kind!r}; valid: ['hpo', 'nas']"
        )
    run_until(study, objective, total)
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
