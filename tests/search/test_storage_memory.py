"""An in-memory SQLite URL is refused: the study would vanish when the command exits, and the
heartbeat thread's own connection sees an empty database (a traceback from that thread)."""

import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import make_storage


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url):
    with pytest.raises(ConfigError, match="in-memory SQLite database.*give a file: sqlite:///"):
        make_storage(url)


def test_cli_in_memory_storage_exits_2_without_traceback(capfd):
    assert main(["search", "nas", "--storage", "sqlite://", "--trials", "1"]) == 2
    err = capfd.readouterr().err
    assert "in-memory SQLite database" in err and "Traceback" not in err
