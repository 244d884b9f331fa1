"""`slimkit search worker`: join a stored study and run trials until it has its trial count.

The study's task JSON (written when it was created) says what to run, so N workers started
anywhere with the same storage URL and study name share the work with no duplicated trial.

An auto-compress study (``slimkit search auto MODEL_FILE ...``) stores where its inputs and
outputs are: the model file (absolute path and SHA-256), the dataset and the output folder
(absolute). A worker loads that file and dataset, re-plans the budget (deterministic) and writes
trial N's artifact to ``<out>/trials/trial_N.slim``; so every worker needs the same model file
at the same path and writes to the same folder path: a shared filesystem, or the same layout on
each machine (then copy the trial files back before the coordinating ``search auto`` rerun picks
the best one). A study created by the Python API ``auto_compress`` holds no such paths and is
refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimkit.errors import ConfigError

if TYPE_CHECKING:
    from slimkit.search.study import TrialCounts


def run_worker(
    study_name: str,
    storage: str | None,
    n_trials: int | None = None,
    *,
    heartbeat: int | None = None,
) -> TrialCounts:
    """Run trials of a stored study; returns its trials by outcome afterwards (``finished`` is
    what the trial count is checked against: complete, pruned and diverged trials).

    A study (or database) that does not exist is a ConfigError, and nothing is created; so is an
    auto-compress study whose model file is gone or changed, or that has no file (API-created).
    The worker beats at the study's heartbeat interval; ``heartbeat`` (None: the study's) other
    than that is a ConfigError.
    """
    from slimkit.config import check_int
    from slimkit.search.hpo import HPOConfig, check_teacher_file, make_pruner
    from slimkit.search.hpo import make_objective as hpo_objective
    from slimkit.search.nas import NASConfig, directions
    from slimkit.search.nas import make_objective as nas_objective
    from slimkit.search.spaces import SearchSpace
    from slimkit.search.storage import make_storage
    from slimkit.search.study import load_task, open_study, run_until, trial_counts

    if n_trials is not None:
        check_int("trials", n_trials, 1, 100_000)
    if heartbeat is not None:
        check_int("heartbeat", heartbeat, 1, 3600)
    task = load_task(study_name, storage)
    heartbeat = _study_heartbeat(study_name, storage, heartbeat)
    kind = task.get("kind")
    # Checked (and loaded) before the storage is opened for trials: a bad source adds nothing.
    auto = _auto_objective(study_name, task) if kind == "auto" else None
    if kind == "nas":
        _check_nas_data(study_name, task)
    storage_obj = make_storage(storage, heartbeat_interval=heartbeat)
    if kind == "nas":
        cfg = NASConfig.from_dict(task["config"])
        space = SearchSpace(task["space"])
        from slimkit.data import load_dataset

        study = open_study(study_name, storage_obj, directions(cfg), task, fresh_seed=True)
        objective = nas_objective(space, load_dataset(cfg.dataset), cfg)
        total = n_trials or cfg.n_trials
    elif kind == "hpo":
        hcfg = HPOConfig.from_dict(task["config"])
        dirs = ["maximize"] if len(hcfg.objectives) == 1 else ["maximize", "minimize"]
        pruner = make_pruner(hcfg.pruner)
        study = open_study(study_name, storage_obj, dirs, task, pruner=pruner, fresh_seed=True)
        check_teacher_file(study, hcfg)
        objective = hpo_objective(hcfg)
        total = n_trials or hcfg.n_trials
    elif auto is not None:
        import torch

        from slimkit.search.autocompress import default_sampler

        acfg, objective = auto
        study = open_study(
            study_name,
            storage_obj,
            ["maximize"],
            task,
            sampler=default_sampler(acfg),
            fresh_seed=True,
        )
        total = n_trials or acfg.n_trials
        torch.manual_seed(acfg.seed)
    else:
        raise ConfigError(
            f"study {study_name!r} holds an unknown task kind {kind!r}; valid: ['auto', 'hpo', "
            "'nas']"
        )
    run_until(study, objective, total)
    return trial_counts(study)


def _check_nas_data(study_name: str, task: dict[str, Any]) -> None:
    """Refuse a NAS study made by ``nas(data, ...)`` with data that is no packaged dataset: the
    study records the data's name, which a worker cannot load."""
    from slimkit.data import dataset_names

    label = task.get("config", {}).get("dataset")
    if label not in dataset_names():
        raise ConfigError(
            f"study {study_name!r} was created by the Python API nas() with the in-memory data "
            f"{label!r}, which a worker cannot load (it loads packaged datasets only: "
            f"{dataset_names()}); add trials by calling nas(data, cfg, study_name="
            f"{study_name!r}, storage=URL) again with that data, or create the study on a "
            "packaged dataset: slimkit search nas --dataset NAME --study NEW_NAME --storage URL"
        )


def _study_heartbeat(study_name: str, storage: str | None, asked: int | None) -> int:
    """The study's heartbeat interval; a worker asking for another one is refused. Each process
    fails the trials silent for twice its own interval, so a shorter one would fail the other
    processes' live trials (whose tell then raises in Optuna) and a longer one have its own
    failed by them. A study made before the interval was recorded takes the one asked for
    (the CLI made those at storage.HEARTBEAT, the default here)."""
    from slimkit.search.storage import HEARTBEAT
    from slimkit.search.study import stored_heartbeat

    stored = stored_heartbeat(study_name, storage)
    if stored is None:
        return HEARTBEAT if asked is None else asked
    if asked is not None and asked != stored:
        raise ConfigError(
            f"heartbeat must be the study's, but got {asked} s while study {study_name!r} "
            f"beats every {stored} s (the run that created it and every worker use it; with "
            "another interval processes fail each other's live trials); leave --heartbeat out, "
            f"and the worker uses the study's {stored} s"
        )
    return stored


def _auto_objective(study_name: str, task: dict[str, Any]):
    """``(config, objective)`` of an auto-compress study, rebuilt from its stored source with the
    CLI's loaders; refused (creating nothing) when the source is absent, gone or changed."""
    from pathlib import Path

    from slimkit import atomic
    from slimkit.cli.common import load_data, load_model_for
    from slimkit.search.autocompress import (
        AutoCompressConfig,
        file_sha256,
        make_objective,
        prepare,
    )
    from slimkit.training import evaluate_accuracy

    source = task.get("source")
    if not isinstance(source, dict):
        raise ConfigError(
            f"study {study_name!r} was created by the Python API auto_compress (or from a zoo "
            "model name), which keeps the model and data in memory, so a worker has no model "
            "file or dataset to load; create the study with the CLI instead: slimkit search "
            "auto MODEL_FILE --dataset NAME --study NEW_NAME --storage URL, then start workers on it"
        )
    path = Path(source["model"])
    if not path.is_file():
        raise ConfigError(
            f"study {study_name!r} compresses the model file {str(path)!r}, which does not exist "
            "here; every worker needs that file at the same absolute path (a shared filesystem, "
            "or the same layout on each machine): copy it there, or run the worker where it is"
        )
    digest = file_sha256(path)
    if digest != source["sha256"]:
        raise ConfigError(
            f"the model file {str(path)!r} of study {study_name!r} has changed since the study "
            f"was created (SHA-256 {digest[:12]}..., the study's {source['sha256'][:12]}...); "
            "a worker must compress the model the study searches: restore that file, or create "
            "a new study for the new model with slimkit search auto MODEL_FILE --study NEW_NAME"
        )
    cfg = AutoCompressConfig.from_dict(task["config"])
    data = load_data(source["dataset"], source["batch_size"])
    model = load_model_for(str(path), source["dataset"])
    layers, plan = prepare(model, data, cfg)
    if plan.groups != task["groups"]:  # the same file and config plan the same groups
        raise ConfigError(
            f"the model file {str(path)!r} plans the layer groups {plan.groups}, but study "
            f"{study_name!r} searches {task['groups']}; create a new study for this model"
        )
    out = Path(source["out"])
    dense_acc = evaluate_accuracy(model.eval(), data.test)
    atomic.output_dir(out / "trials")
    return cfg, make_objective(model, data, cfg, plan, layers, dense_acc, out)
