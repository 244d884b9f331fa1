"""A worker beats at the heartbeat interval of the study it joins. Each process fails the trials
silent for twice its own interval, so a worker started with `--heartbeat 1` beside a run beating
every 10 s failed that run's live trial, whose tell then raised Optuna's "ValueError: Cannot tell
a FAIL trial" traceback. The study records its interval; a worker asking for another is refused."""

import optuna
import pytest

import slimkit.search.storage as storage_module
from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import hpo
from slimkit.search.hpo import HPOConfig
from slimkit.search.worker import run_worker

ONE_TRIAL = HPOConfig(
    model="lenet300", space={"epochs": [1]}, n_trials=1, max_batches=2, strategy="random"
)


def _spy_on_heartbeats(monkeypatch) -> list:
    """The heartbeat intervals storages are opened with, in order."""
    opened = []
    make_storage = storage_module.make_storage

    def spy(url=None, **kwargs):
        opened.append(kwargs.get("heartbeat_interval"))
        return make_storage(url, **kwargs)

    monkeypatch.setattr(storage_module, "make_storage", spy)
    return opened


def test_a_worker_asking_for_another_heartbeat_is_refused_and_adds_nothing(tmp_path, capfd):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hpo(ONE_TRIAL, storage=url, study_name="s")
    with pytest.raises(ConfigError, match=r"got 1 s while study 's' beats every 10 s.*leave"):
        run_worker("s", url, 2, heartbeat=1)
    argv = ["search", "worker", "--study", "s", "--storage", url, "--trials", "2"]
    assert main([*argv, "--heartbeat", "30"]) == 2
    err = capfd.readouterr().err
    assert "got 30 s while study 's' beats every 10 s" in err and "Traceback" not in err
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1
    assert main([*argv, "--heartbeat", "10"]) == 0  # the study's own interval is fine


def test_a_worker_beats_at_the_interval_the_study_recorded(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = hpo(ONE_TRIAL, storage=url, study_name="s")
    assert study.user_attrs["slimkit_heartbeat"] == 10
    study.set_user_attr("slimkit_heartbeat", 3)  # as if created with another interval
    opened = _spy_on_heartbeats(monkeypatch)
    assert run_worker("s", url, 2).complete == 2
    assert opened == [3]


def test_an_api_run_on_another_heartbeat_is_refused_before_any_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hpo(ONE_TRIAL, storage=url, study_name="s")
    other = storage_module.make_storage(url, heartbeat_interval=1)
    more = HPOConfig(**{**ONE_TRIAL.to_dict(), "n_trials": 2})
    with pytest.raises(ConfigError, match=r"beats every 10 s, but this storage beats every 1 s"):
        hpo(more, storage=other, study_name="s")
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1


def test_a_study_from_before_the_record_takes_the_interval_asked_for(tmp_path, monkeypatch):
    import sqlite3

    path = tmp_path / "h.db"
    url = f"sqlite:///{path}"
    hpo(ONE_TRIAL, storage=url, study_name="s")
    with sqlite3.connect(path) as conn:  # as written before studies recorded their interval
        conn.execute("DELETE FROM study_user_attributes WHERE key = 'slimkit_heartbeat'")
    opened = _spy_on_heartbeats(monkeypatch)
    assert run_worker("s", url, 2, heartbeat=3).complete == 2
    # the first worker recorded its 3 s: this one beats so
    assert run_worker("s", url, 3).complete == 3
    assert opened == [3, 3]
