"""Create, resume and share studies. A study stores its task (what to search, on what data,
with which strategy) as JSON in its user attributes, so `slimkit search worker` started on any
machine with the same storage URL and study name rebuilds the same objective and sampler."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
import weakref
from pathlib import Path
from typing import Any

from slimkit.errors import ConfigError, SlimkitError, import_extra
from slimkit.search.storage import default_url, make_storage, mask_url, sqlite_path

_DEFAULT_STRATEGY = {"nas": "evolution", "hpo": "tpe"}  # NASConfig's and HPOConfig's defaults


# The heartbeat interval (s) of the run that created the study: every process of a study must
# beat at the same interval (see storage.HEARTBEAT), so a worker reads it here.
HEARTBEAT_ATTR = "slimkit_heartbeat"
# The options of the sampler a study built from its task, as resolved when it was created
# (samplers.resolve_options: evolution's population derived from the trial count then).
SAMPLER_ATTR = "slimkit_sampler_options"
# Set on a trial whose training diverged (NumericsError): failed, counted in the trial budget.
DIVERGED_ATTR = "slimkit_diverged"


class StrategyReplacedWarning(UserWarning):
    """A multi-objective study runs NSGA-II instead of the single-objective strategy asked for."""


class StudyReplacedWarning(UserWarning):
    """A study of another task that held nothing but failed trials was replaced."""


# Studies this process created, with the storage and the SQLite file it created for them (or
# None): a run that fails before any trial finished deletes them again (see run_until).
_NEW: weakref.WeakKeyDictionary[Any, tuple[Any, Path | None]] = weakref.WeakKeyDictionary()


def open_study(
    name: str,
    storage,
    directions: list[str],
    task: dict[str, Any],
    sampler=None,
    pruner=None,
    *,
    fresh_seed: bool = False,
):
    """Create the study or load it; a study made for another task is refused.

    ``storage`` is a URL (None: the default SQLite file) or a storage from make_storage.
    ``fresh_seed`` (a worker joining the study) and any resume reseed the sampler from fresh
    entropy, so they do not propose the first run's parameters again.
    A study of another task that holds failed trials and nothing else (a run that failed before
    any trial finished) has nothing to resume: it is replaced, with a StudyReplacedWarning.
    """
    optuna = import_extra("optuna", "search")
    from optuna.trial import TrialState

    from slimkit.search.samplers import make_sampler, resolve_options, warn_if_never_guided

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = task["config"]
    n_trials = cfg.get("n_trials")
    if sampler is not None:  # the caller's own: its warm-up is theirs to fit to the budget
        warn_if_never_guided(sampler, n_trials, stacklevel=2)
    options: dict[str, Any] | None = None  # the options of a sampler built here
    explicit: dict[str, Any] = dict(cfg.get("sampler_options", {}))
    strategy = cfg.get("strategy", "tpe")
    if sampler is None:
        if len(directions) > 1 and strategy in ("evolution", "reinforce", "tpe"):
            # A chosen strategy is said to be replaced, not silently (comparing strategies on a
            # multi-objective search compared NSGA-II with itself); the default, quietly.
            if strategy != _DEFAULT_STRATEGY.get(str(task.get("kind")), strategy):
                warnings.warn(
                    f"{len(directions)} objectives: the search uses NSGA-II, not strategy "
                    f"{strategy!r} (single-objective); choose strategy nsga2 to say so, or one "
                    "objective to use it",
                    StrategyReplacedWarning,
                    stacklevel=2,
                )
            strategy = "nsga2"
        # Bad options fail here, before any storage is opened.
        options = resolve_options(strategy, explicit, n_trials)
        sampler = make_sampler(strategy, seed=cfg.get("seed"), **options)
        if {"population", "warmup"} & set(explicit):  # a derived warm-up fits the budget
            warn_if_never_guided(sampler, n_trials, stacklevel=2)
    new_file: Path | None = None
    if storage is None or isinstance(storage, str):
        path = sqlite_path(storage or default_url())
        new_file = path if path is not None and not path.exists() else None
        label, rdb = mask_url(storage or "the default storage"), make_storage(storage)
    else:
        label, rdb = "the given storage", storage

    def create():
        return optuna.create_study(
            study_name=name,
            storage=rdb,
            directions=directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )

    existed = _exists(rdb, name)
    if options is not None and existed:
        # The options the study recorded when it was created (its population derived from the
        # trial count it had then); a study from before they were recorded ran with the
        # explicit ones. A resume asking for more trials, or a worker, samples alike.
        # (A study of another task is refused or replaced below: its options are not used.)
        attrs = rdb.get_study_user_attrs(rdb.get_study_id_from_name(name))
        same = "slimkit_task" not in attrs or _identity(attrs["slimkit_task"]) == _identity(task)
        kept = attrs.get(SAMPLER_ATTR, explicit) if same else options
        if kept != options:
            options = dict(kept)
            sampler = make_sampler(strategy, seed=cfg.get("seed"), **options)
    study = create()
    stored = study.user_attrs.get("slimkit_task")
    if stored is not None and _identity(stored) != _identity(task):
        trials = study.get_trials(deepcopy=False)
        # No trial at all is refused too: that is most likely another run that has just
        # created its study and not yet asked for trial 0, not a leftover to replace.
        if not trials:
            raise ConfigError(
                f"study {name!r} in {label} was created for another task and holds no trial "
                "yet (another run may be starting it); use a new --study name, or, if no run "
                f"uses it, delete it: optuna delete-study --study-name {name} --storage URL"
            )
        if any(t.state != TrialState.FAIL for t in trials):
            raise ConfigError(
                f"study {name!r} in {label} was created for another task "
                f"({_differences(stored, task)}); use a new --study name or the same options"
            )
        warnings.warn(
            StudyReplacedWarning(
                f"study {name!r} in {label} was created for another task but holds only "
                f"{len(trials)} failed trial(s) and nothing finished; replaced it by this task"
            ),
            stacklevel=2,
        )
        optuna.delete_study(study_name=name, storage=rdb)
        study, stored, existed = create(), None, False
    beat = rdb.get_heartbeat_interval() if hasattr(rdb, "get_heartbeat_interval") else None
    recorded = study.user_attrs.get(HEARTBEAT_ATTR)
    if beat is not None and recorded is not None and beat != recorded:
        # An API run with make_storage(url, heartbeat_interval=...) joining a study that beats
        # at another interval would fail the other processes' live trials (see storage.HEARTBEAT).
        raise ConfigError(
            f"study {name!r} in {label} beats every {recorded} s, but this storage beats every "
            f"{beat} s; every process of a study must use the same interval: open the storage "
            f"with make_storage(url, heartbeat_interval={recorded})"
        )
    if beat is not None and recorded is None:
        # Before the task: a worker that finds the task also finds the heartbeat it must use.
        study.set_user_attr(HEARTBEAT_ATTR, beat)
    if options is not None and study.user_attrs.get(SAMPLER_ATTR) != options:
        # Before the task, like the heartbeat: a worker that finds the task finds these too.
        study.set_user_attr(SAMPLER_ATTR, options)
    task = json.loads(json.dumps(task))
    if stored != task:  # new, or a resume asking for another trial count: workers read it
        study.set_user_attr("slimkit_task", task)
    if not existed:
        _NEW[study] = (rdb, new_file)
    if fresh_seed or study.get_trials(deepcopy=False):
        # A worker, or a resumed run, samples from fresh entropy: seeded like the study's first
        # run it drew that run's first parameters again (a repeated trial). Samplers that seed
        # per trial number (evolution, reinforce) never repeat and keep their seed (no-op).
        study.sampler.reseed_rng()
    return study


def _exists(rdb, name: str) -> bool:
    try:
        rdb.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _discard_if_nothing_finished(study) -> None:
    """Delete a study this process created when every trial in it failed (nothing finished,
    nothing running elsewhere), and the SQLite file it created for it when that is now empty,
    so the corrected rerun starts clean and bad input leaves no database behind."""
    from optuna.trial import TrialState

    rdb, new_file = _NEW.pop(study, (None, None))
    if rdb is None:
        return
    try:
        if any(t.state != TrialState.FAIL for t in study.get_trials(deepcopy=False)):
            return
        rdb.delete_study(rdb.get_study_id_from_name(study.study_name))
        if new_file is not None and not rdb.get_all_studies():
            rdb.remove_session()
            rdb.engine.dispose()
            _unlink_if_still_empty(new_file)
    except Exception:  # best effort: the error that stopped the run is the one to report
        logging.getLogger(__name__).debug("could not discard study", exc_info=True)


def _unlink_if_still_empty(path: Path) -> None:
    """Remove the SQLite file this run created, unless another process is using it.

    The check and the unlink happen under SQLite's exclusive lock (taken without waiting), so a
    process that is writing, or has written a study since our check, keeps its file; a busy
    file is simply left. A process that has only connected, not yet written, is the one case a
    lock cannot see.
    """
    import sqlite3

    if not path.is_file():
        return
    # mode=rw: a file that is gone already is not created again by connecting
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=0)
    conn.isolation_level = None
    try:
        conn.execute("BEGIN EXCLUSIVE")
        if conn.execute("SELECT count(*) FROM studies").fetchone()[0] == 0:
            path.unlink(missing_ok=True)
        conn.execute("ROLLBACK")
    except sqlite3.Error:  # locked by another process: it is in use, keep it
        return
    finally:
        conn.close()


def _differences(stored: dict[str, Any], task: dict[str, Any], most: int = 4) -> str:
    """What tells two tasks apart, for the refusal: ``key: study X, this run Y`` per config key
    (then per other top-level key), so a user sees which option to give back."""
    a, b = json.loads(json.dumps(stored)), json.loads(json.dumps(task))
    ca, cb = a.pop("config", {}), b.pop("config", {})
    ca.pop("n_trials", None), cb.pop("n_trials", None)
    diffs = [
        f"{key}: study {side_a.get(key)!r}, this run {side_b.get(key)!r}"
        for side_a, side_b in ((ca, cb), (a, b))
        for key in sorted(set(side_a) | set(side_b))
        if side_a.get(key) != side_b.get(key)
    ]
    more = f", and {len(diffs) - most} more" if len(diffs) > most else ""
    return "; ".join(diffs[:most]) + more if diffs else "its task differs"


def _identity(task: dict[str, Any]) -> str:
    """The task without its trial count: asking an existing study for more trials is a resume."""
    t = json.loads(json.dumps(task))
    t.get("config", {}).pop("n_trials", None)
    return json.dumps(t, sort_keys=True)


def _load_study(name: str, storage: str | None):
    """An existing study; a missing study or database is a ConfigError and creates nothing."""
    optuna = import_extra("optuna", "search")
    rdb = make_storage(storage, create=False)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        names = sorted(s.study_name for s in rdb.get_all_studies())
        raise ConfigError(
            f"no study named {name!r} in {mask_url(storage or 'the default storage')} "
            f"(it holds {names or 'no study'}); give one of those names, or create the study "
            "first with slimkit search hpo|nas|auto --study NAME --storage URL"
        ) from None


def stored_heartbeat(name: str, storage: str | None) -> int | None:
    """The heartbeat interval (s) an existing study's processes use, or None for a study made
    before it was recorded (the CLI made those at storage.HEARTBEAT, the API at any value)."""
    value = _load_study(name, storage).user_attrs.get(HEARTBEAT_ATTR)
    return value if isinstance(value, int) else None


def load_task(name: str, storage: str | None) -> dict[str, Any]:
    """The task stored in an existing study; a missing study or database creates nothing."""
    study = _load_study(name, storage)
    task = study.user_attrs.get("slimkit_task")
    if task is None:
        raise ConfigError(
            f"study {name!r} holds no slimkit task: it was not created by slimkit, or its "
            "creating run has only just made it (start the worker again in a moment)"
        )
    return task


@dataclasses.dataclass(frozen=True)
class TrialCounts:
    """A study's trials by outcome. ``finished`` (complete + pruned + diverged) is what
    :func:`run_until` counts against the trial budget; trials failed for other reasons (a
    worker that stopped beating, retried) are not."""

    complete: int
    pruned: int
    diverged: int  # training raised NumericsError (NaN/inf): failed, recorded, budget spent

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    def __str__(self) -> str:
        return (
            f"{self.finished} finished trials ({self.complete} complete, {self.pruned} pruned, "
            f"{self.diverged} diverged)"
        )


def trial_counts(study) -> TrialCounts:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return TrialCounts(
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        diverged=sum(t.state == TrialState.FAIL and DIVERGED_ATTR in t.user_attrs for t in trials),
    )


def run_until(study, objective, n_trials: int) -> None:
    """Run trials until the study has ``n_trials`` finished trials (:class:`TrialCounts`).

    Safe with several workers on one study: each checks the shared count before a new trial.
    A trial whose training diverges (NumericsError) is failed and recorded, and the search goes
    on (Optuna logs one line naming the trial, its parameters and the error); any other error
    stops the search. When no trial of the study completed or was pruned, every one diverged:
    that raises NumericsError (and a study this process created is deleted again).
    """
    optuna = import_extra("optuna", "search")
    from slimkit.errors import NumericsError

    if trial_counts(study).finished >= n_trials:
        return

    def guarded(trial):
        try:
            return objective(trial)
        except NumericsError as exc:
            # Counted as spent budget: a space where every trial diverges still ends.
            trial.set_user_attr(DIVERGED_ATTR, str(exc).splitlines()[0] if str(exc) else "")
            raise

    def stop_at_budget(study, trial) -> None:
        if trial_counts(study).finished >= n_trials:
            study.stop()

    quiet = _NoTracebackForSlimkitErrors()
    handlers = list(logging.getLogger("optuna").handlers)  # filters on handlers see child records
    for h in handlers:
        h.addFilter(quiet)
    try:
        study.optimize(
            guarded,
            catch=(NumericsError,),
            callbacks=[stop_at_budget],
            gc_after_trial=False,
        )
        counts = trial_counts(study)
        if counts.complete + counts.pruned == 0 and counts.diverged:
            first = next(
                t for t in study.get_trials(deepcopy=False) if DIVERGED_ATTR in t.user_attrs
            )
            raise NumericsError(
                f"every trial of study {study.study_name!r} diverged ({counts.diverged} trials, "
                f"e.g. trial {first.number} with {first.params}: "
                f"{first.user_attrs[DIVERGED_ATTR]}); nothing finished to choose from: lower the "
                "learning rate or narrow the search space"
            )
    except BaseException:
        _discard_if_nothing_finished(study)
        raise
    finally:
        for h in handlers:
            h.removeFilter(quiet)
    # A worker killed mid-trial stops beating; fail (and re-queue) its trial now rather than
    # leave it RUNNING when the study is otherwise done.
    optuna.storages.fail_stale_trials(study)


class _NoTracebackForSlimkitErrors(logging.Filter):
    """Optuna logs a failed trial's traceback; for slimkit's own errors (bad input, stated in
    one line by the CLI; a diverged trial, after which the search goes on) the one-line warning
    naming the trial, its parameters and the error is enough: the traceback, and Optuna's
    second line ("Trial N failed with value None."), are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._said: set[str] = set()  # "Trial N failed with value None." lines to drop

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SlimkitError):
            record.exc_info, record.exc_text = None, None
            words = record.getMessage().split(maxsplit=2)  # "Trial N failed with parameters..."
            if len(words) == 3 and words[0] == "Trial":
                self._said.add(f"Trial {words[1]} failed with value None.")
            return True
        return record.getMessage() not in self._said  # (each handler sees the record)
