"""Each NAS objective may be listed once; a repeated one is refused before anything runs."""

import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import NASConfig


@pytest.mark.parametrize("objectives", [("accuracy", "accuracy"), ("accuracy", "params", "params")])
def test_repeated_objective_is_refused(objectives):
    with pytest.raises(ConfigError, match=r"objectives must each appear once, but got"):
        NASConfig(objectives=objectives)


def test_cli_repeated_objective_exits_2_and_creates_nothing(tmp_path, capsys):
    db = tmp_path / "n.db"
    rc = main(
        ["search", "nas", "--objectives", "accuracy,flops,flops", "--storage", f"sqlite:///{db}"]
    )
    assert rc == 2
    assert "['flops'] repeated" in capsys.readouterr().err
    assert not db.exists()


def test_cli_objectives_may_have_spaces_after_commas(monkeypatch):
    seen = {}

    def fake_nas(cfg, **kwargs):
        seen["objectives"] = cfg.objectives
        raise ConfigError("stop here")

    import slimkit.search

    monkeypatch.setattr(slimkit.search, "nas", fake_nas)
    assert main(["search", "nas", "--objectives", "accuracy, params"]) == 2
    assert seen["objectives"] == ("accuracy", "params")
