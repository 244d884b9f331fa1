"""The console script (``slimkit.cli:run``) skips interpreter teardown only for a torchrun worker
whose pipeline joined and left the process group; ``main()`` always returns."""

import pytest

from slimkit import cli
from slimkit.pipeline import runner


class Exited(Exception):
    pass


def test_run_exits_normally_unless_a_process_group_was_left(monkeypatch):
    calls = []

    def fake_exit(code):
        calls.append(code)
        raise Exited

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.sys, "argv", ["slimkit", "no-such-command"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # torchrun's variables alone: main returns, run exits through SystemExit (atexit runs)
    assert cli.main(["no-such-command"]) == 2
    with pytest.raises(SystemExit) as done:
        cli.run()
    assert done.value.code == 2 and calls == []
    # after the pipeline left its gloo group: os._exit with the same code, teardown skipped
    monkeypatch.setattr(runner, "LEFT_PROCESS_GROUP", True)
    with pytest.raises(Exited):
        cli.run()
    assert calls == [2]
