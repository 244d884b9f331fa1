"""--max-params is a parameter cap for single-objective NAS (as its help says): values < 1 and a
cap on a multi-objective search are refused; when no architecture tried fits, the command says
so and exits 1 (the result is still written), and the best is the trial nearest the cap."""

import json

import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import NASConfig, SearchSpace, nas

SPACE = SearchSpace({"depth": (1, 2), "width": (8,), "kernel": (3,), "block": ("plain",)})


@pytest.mark.parametrize("cap", [-5, 0, True, 1.5])
def test_cap_below_one_or_not_a_whole_number_is_refused(cap):
    with pytest.raises(ConfigError, match="max_params must be"):
        NASConfig(max_params=cap)


def test_cap_on_a_multi_objective_search_is_refused():
    with pytest.raises(ConfigError, match="max_params caps a single-objective search"):
        NASConfig(max_params=1000, objectives=("accuracy", "params"))


def test_cli_negative_cap_exits_2_and_creates_nothing(tmp_path, capsys):
    db = tmp_path / "n.db"
    assert main(["search", "nas", "--max-params", "-5", "--storage", f"sqlite:///{db}"]) == 2
    assert "max_params must be in 1..1000000000000, but got -5" in capsys.readouterr().err
    assert not db.exists()


def test_nothing_within_the_cap_best_is_the_nearest_and_cli_exits_1(digits, tmp_path, capsys):
    cfg = NASConfig(epochs=1, n_trials=2, strategy="random", max_params=10)
    res = nas(digits, cfg, space=SPACE, storage=f"sqlite:///{tmp_path / 'a.db'}")
    smallest = min(r["params"] for r in res.trials)
    assert res.best["params"] == smallest and res.best["within_cap"] is False

    space = tmp_path / "space.yaml"
    space.write_text("depth: [1]\nwidth: [8]\nkernel: [3]\nblock: [plain]\n")
    out = tmp_path / "r.json"
    args = ["search", "nas", "--storage", f"sqlite:///{tmp_path / 'c.db'}", "--trials", "1"]
    args += ["--epochs", "1", "--strategy", "random", "--space", str(space), "--out", str(out)]
    assert main([*args, "--max-params", "10"]) == 1
    assert "no architecture tried fits --max-params 10" in capsys.readouterr().err
    assert json.loads(out.read_text())["best"]["within_cap"] is False
