"""Create, resume and share studies. A study stores its task (what to search, on what data,
with which strategy) as JSON in its user attributes, so `slimkit search worker` started on any
machine with the same storage URL and study name rebuilds the same objective and sampler."""

from __future__ import annotations

import json
from typing import Any

from slimkit.errors import ConfigError, import_extra
from slimkit.search.storage import make_storage, mask_url


def open_study(
    name: str, storage, directions: list[str], task: dict[str, Any], sampler=None, pruner=None
):
    """Create the study or load it; a study made for another task is refused.

    ``storage`` is a URL (None: the default SQLite file) or a storage from make_storage.
    """
    optuna = import_extra("optuna", "search")
    from slimkit.search.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = task["config"]
    if sampler is None:
        strategy = cfg.get("strategy", "tpe")
        if len(directions) > 1 and strategy in ("evolution", "reinforce", "tpe"):
            strategy = "nsga2"
        sampler = make_sampler(strategy, seed=cfg.get("seed"), **cfg.get("sampler_options", {}))
    if storage is None or isinstance(storage, str):
        label, rdb = mask_url(storage or "the default storage"), make_storage(storage)
    else:
        label, rdb = "the given storage", storage
    study = optuna.create_study(
        study_name=name,
        storage=rdb,
        directions=directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = study.user_attrs.get("slimkit_task")
    if stored is None:
        study.set_user_attr("slimkit_task", json.loads(json.dumps(task)))
    elif _identity(stored) != _identity(task):
        raise ConfigError(
            f"study {name!r} in {label} was created for another "
            "task; use a new --study name or the same options"
        )
    return study


def _identity(task: dict[str, Any]) -> str:
    """The task without its trial count: asking an existing study for more trials is a resume."""
    t = json.loads(json.dumps(task))
    t.get("config", {}).pop("n_trials", None)
    return json.dumps(t, sort_keys=True)


def load_task(name: str, storage: str | None) -> dict[str, Any]:
    """The task stored in an existing study; a missing study or database creates nothing."""
    optuna = import_extra("optuna", "search")
    rdb = make_storage(storage, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        names = sorted(s.study_name for s in rdb.get_all_studies())
        raise ConfigError(
            f"no study named {name!r} in {mask_url(storage or 'the default storage')} "
            f"(it holds {names or 'no study'}); give one of those names, or create the study "
            "first with slimkit search hpo|nas --study NAME --storage URL"
        ) from None
    task = study.user_attrs.get("slimkit_task")
    if task is None:
        raise ConfigError(f"study {name!r} was not created by slimkit (no task stored)")
    return task


def run_until(study, objective, n_trials: int) -> None:
    """Run trials until the study has ``n_trials`` finished (complete or pruned) trials.

    Safe with several workers on one study: each checks the shared count before a new trial.
    """
    optuna = import_extra("optuna", "search")
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=states)) >= n_trials:
        return
    study.optimize(
        objective,
        callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=states)],
        gc_after_trial=False,
    )
    # A worker killed mid-trial stops beating; fail (and re-queue) its trial now rather than
    # leave it RUNNING when the study is otherwise done.
    optuna.storages.fail_stale_trials(study)
