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


def test_cli_pareto_table_names_the_studys_objectives(monkeypatch, capsys):
    import slimkit.search
    from slimkit.search.nas import NASResult

    row = {"arch": {"depth": 1}, "accuracy": 0.9, "params": 1200, "flops": 5000, "latency_ms": 0.4}
    monkeypatch.setattr(slimkit.search, "nas", lambda **kw: NASResult("s", row, [row], [row]))
    assert main(["search", "nas", "--objectives", "accuracy,latency_ms"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # was "Pareto front (accuracy vs params)" without a latency column
    assert "Pareto front (accuracy vs latency_ms)" in out and "latency ms" in out and "0.4" in out


def test_multi_objective_strategy_swap_is_said_and_out_checked_first(digits, tmp_path, capsys):
    from slimkit.search import SearchSpace, nas
    from slimkit.search.study import StrategyReplacedWarning

    space = tmp_path / "space.yaml"
    space.write_text("depth: [1]\n")
    db = tmp_path / "s.db"
    argv = ["search", "nas", "--space", str(space), "--storage", f"sqlite:///{db}"]
    assert main([*argv, "--out", str(space)]) == 2  # would have overwritten the space file
    assert "--out" in capsys.readouterr().err and not db.exists()
    tiny = SearchSpace({"depth": (1,), "width": (8,), "kernel": (3,), "block": ("plain",)})
    cfg = NASConfig(epochs=1, n_trials=1, objectives=("accuracy", "params"), strategy="reinforce")
    with pytest.warns(StrategyReplacedWarning, match=r"uses NSGA-II, not strategy 'reinforce'"):
        nas(digits, cfg, space=tiny, storage=f"sqlite:///{tmp_path / 'w.db'}")
    import warnings

    default = NASConfig(epochs=1, n_trials=1, objectives=("accuracy", "params"))
    with warnings.catch_warnings():  # the default strategy is replaced quietly (documented)
        warnings.simplefilter("error", StrategyReplacedWarning)
        nas(digits, default, space=tiny, storage=f"sqlite:///{tmp_path / 'd.db'}")


def test_hpo_says_when_its_pruner_is_unused(monkeypatch):
    import slimkit.search.study
    from slimkit.search import HPOConfig, hpo
    from slimkit.search.study import StrategyReplacedWarning

    def stop(*_a, **_k):
        raise ConfigError("stop before the study")

    monkeypatch.setattr(slimkit.search.study, "open_study", stop)
    cfg = HPOConfig(
        space={"bits": [4, 8]}, objectives=("accuracy", "bytes"), pruner="hyperband", n_trials=1
    )
    with pytest.warns(StrategyReplacedWarning, match=r"pruner 'hyperband' is not used"):
        with pytest.raises(ConfigError, match="stop before"):
            hpo(cfg)  # was dropped silently
