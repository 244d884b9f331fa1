"""`slimkit search worker` joins an existing study only: a missing database file, a database
without Optuna's tables or a missing study is a ConfigError, and nothing is created or added."""

import optuna
import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import make_storage
from slimkit.search.worker import run_worker


def test_worker_for_a_missing_database_creates_nothing(tmp_path, capsys):
    db = tmp_path / "w.db"
    with pytest.raises(ConfigError, match="the file '.*w.db' does not exist"):
        run_worker("nope", f"sqlite:///{db}")
    assert main(["search", "worker", "--study", "nope", "--storage", f"sqlite:///{db}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not db.exists()


def test_worker_for_an_empty_or_foreign_database_creates_nothing(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(ConfigError, match="holds no Optuna studies"):
        run_worker("nope", f"sqlite:///{empty}")
    assert empty.stat().st_size == 0
    text = tmp_path / "text.db"
    text.write_text("hello")
    with pytest.raises(ConfigError, match="file is not a database"):
        run_worker("nope", f"sqlite:///{text}")
    assert text.read_text() == "hello"


def test_worker_for_a_missing_study_names_the_ones_there_and_adds_none(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    optuna.create_study(study_name="real", storage=make_storage(url))
    with pytest.raises(ConfigError, match=r"no study named 'nope' .*\(it holds \['real'\]\)"):
        run_worker("nope", url)
    assert optuna.get_all_study_names(url) == ["real"]


def test_worker_counts_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="trials must be in 1..100000, but got -2"):
        run_worker("s", f"sqlite:///{tmp_path / 'w.db'}", -2)
    with pytest.raises(ConfigError, match="heartbeat must be in 1..3600, but got 0"):
        run_worker("s", f"sqlite:///{tmp_path / 'w.db'}", heartbeat=0)


def test_a_study_without_a_slimkit_task_is_refused_saying_why(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="plain", storage=url)  # or a slimkit run a moment too early
    with pytest.raises(ConfigError, match="holds no slimkit task.*again in a moment"):
        run_worker("plain", url, 1)
