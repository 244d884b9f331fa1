"""A run that fails before any trial finished leaves no study (and no database file it created)
behind, so the corrected rerun under the same --study name starts clean; a study holding only
failed trials of another task is replaced; anything with a finished trial is kept."""

import importlib
import io
import logging

import optuna
import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import make_storage
from slimkit.search.study import StudyReplacedWarning, open_study, run_until

TASK = {"kind": "hpo", "config": {"strategy": "random", "seed": 0, "x": 1}}
OTHER = {"kind": "hpo", "config": {"strategy": "random", "seed": 0, "x": 2}}


def bad(trial):
    trial.suggest_float("x", 0.0, 1.0)
    raise ConfigError("bad input found inside the trial")


def good(trial):
    return trial.suggest_float("x", 0.0, 1.0)


def test_new_study_whose_trials_all_fail_is_removed_with_its_new_file(tmp_path):
    db = tmp_path / "s.db"
    study = open_study("s", f"sqlite:///{db}", ["maximize"], TASK)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("optuna").addHandler(handler)
    try:
        with pytest.raises(ConfigError, match="bad input found"):
            run_until(study, bad, 3)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert not db.exists()
    # optuna's warning stays, without the traceback of slimkit's own (one-line) error
    assert "Trial 0 failed" in log.getvalue() and "Traceback" not in log.getvalue()
    run_until(open_study("s", f"sqlite:///{db}", ["maximize"], OTHER), good, 2)
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["s"]


def test_failed_new_study_in_an_existing_file_is_removed_and_the_file_kept(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="keep", storage=make_storage(url))
    with pytest.raises(ConfigError):
        run_until(open_study("s", url, ["maximize"], TASK), bad, 3)
    assert optuna.get_all_study_names(url) == ["keep"]


def test_study_with_a_finished_trial_is_kept_for_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study("s", url, ["maximize"], TASK)
    calls = []

    def first_good_then_bad(trial):
        calls.append(1)
        if len(calls) > 1:
            raise ConfigError("second trial fails")
        return good(trial)

    with pytest.raises(ConfigError):
        run_until(study, first_good_then_bad, 3)
    assert optuna.get_all_study_names(url) == ["s"]
    with pytest.raises(ConfigError, match="created for another task"):
        open_study("s", url, ["maximize"], OTHER)
    # an existing study that fails again is not deleted either (only this run's new study is)
    with pytest.raises(ConfigError):
        run_until(open_study("s", url, ["maximize"], TASK), bad, 5)
    assert optuna.get_all_study_names(url) == ["s"]


def test_leftover_study_of_only_failed_trials_is_replaced_by_another_task(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    # a leftover from a run that failed (e.g. before this fix): one failed trial, another task
    old = optuna.create_study(study_name="s", storage=url)
    old.set_user_attr("slimkit_task", TASK)
    old.tell(old.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.warns(StudyReplacedWarning, match="holds only 1 failed trial"):
        study = open_study("s", url, ["maximize", "minimize"], OTHER)
    assert study.trials == [] and len(study.directions) == 2
    assert study.user_attrs["slimkit_task"] == OTHER


def test_cli_hpo_failing_in_trial_0_leaves_no_study_and_the_rerun_works(
    tmp_path, monkeypatch, capfd
):
    hpo_mod = importlib.import_module("slimkit.search.hpo")  # the package's `hpo` is the function
    real = hpo_mod.make_objective
    db = tmp_path / "h.db"
    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.01]\nepochs: [1]\n")
    args = ["search", "hpo", "--storage", f"sqlite:///{db}", "--trials", "1"]
    monkeypatch.setattr(hpo_mod, "make_objective", lambda cfg: bad)
    assert main(args) == 2
    assert "bad input found inside the trial" in capfd.readouterr().err
    assert not db.exists()
    monkeypatch.setattr(hpo_mod, "make_objective", real)
    assert main([*args, "--space", str(space)]) == 0  # same default study name, other task
    assert "created for another task" not in capfd.readouterr().err


def test_another_tasks_study_without_trials_is_not_replaced(tmp_path):
    # another run that has created its study but not yet started trial 0: replacing it would
    # pull the study from under that run
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study("s", url, ["maximize"], TASK)
    with pytest.raises(ConfigError, match="another task and holds no trial yet.*delete-study"):
        open_study("s", url, ["maximize"], OTHER)
    assert optuna.load_study(study_name="s", storage=url).user_attrs["slimkit_task"] == TASK


def test_created_file_is_removed_only_when_empty_and_not_in_use(tmp_path):
    import sqlite3

    from slimkit.search.study import _unlink_if_still_empty

    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    open_study("s", url, ["maximize"], TASK)
    _unlink_if_still_empty(db)  # another process's study arrived since the check: kept
    assert optuna.get_all_study_names(url) == ["s"]
    optuna.delete_study(study_name="s", storage=url)
    other = sqlite3.connect(db, isolation_level=None)  # another process, mid-write
    other.execute("BEGIN EXCLUSIVE")
    _unlink_if_still_empty(db)
    other.execute("ROLLBACK")
    other.close()
    assert db.exists()  # busy: left to its user
    _unlink_if_still_empty(db)
    assert not db.exists()
    _unlink_if_still_empty(db)  # already gone: connecting must not create it again
    assert not db.exists()
