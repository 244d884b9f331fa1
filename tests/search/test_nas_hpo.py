import json

import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import HPOConfig, NASConfig, SearchSpace, hpo, nas

SMALL = SearchSpace({"depth": (1, 2), "width": (8,), "kernel": (3,), "block": ("plain", "dwsep")})


def test_nas_single_objective_with_cap(digits, tmp_path):
    cfg = NASConfig(epochs=2, lr=1e-2, n_trials=4, strategy="random", max_params=2_000)
    res = nas(digits, cfg, space=SMALL, storage=f"sqlite:///{tmp_path / 's.db'}", study_name="n")
    assert len(res.trials) == 4
    assert res.best["params"] <= 2_000 and res.best["accuracy"] > 0.3
    assert all(SMALL.contains(r["arch"]) for r in res.trials)
    # resume: asking the same study for 5 trials runs exactly one more
    cfg5 = NASConfig(epochs=2, lr=1e-2, n_trials=5, strategy="random", max_params=2_000)
    res2 = nas(digits, cfg5, space=SMALL, storage=f"sqlite:///{tmp_path / 's.db'}", study_name="n")
    assert len(res2.trials) == 5
    assert [r["arch"] for r in res2.trials[:4]] == [r["arch"] for r in res.trials]


def test_nas_multi_objective_pareto(digits, tmp_path):
    cfg = NASConfig(epochs=1, n_trials=4, objectives=("accuracy", "params"), strategy="nsga2")
    res = nas(digits, cfg, space=SMALL, storage=f"sqlite:///{tmp_path / 'm.db'}")
    front = res.pareto
    assert front and all(
        not any(o["accuracy"] >= f["accuracy"] and o["params"] < f["params"] for o in res.trials)
        for f in front
    )


def test_study_for_another_task_is_refused(digits, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    nas(
        digits,
        NASConfig(epochs=1, n_trials=1, strategy="random"),
        space=SMALL,
        storage=url,
        study_name="s",
    )
    # The refusal names what differs, so the user knows which option to give back.
    with pytest.raises(ConfigError, match=r"another task \(epochs: study 1, this run 2\)"):
        nas(
            digits,
            NASConfig(epochs=2, n_trials=1, strategy="random"),
            space=SMALL,
            storage=url,
            study_name="s",
        )


def test_hpo_prunes_and_validates(tmp_path):
    with pytest.raises(
        ConfigError, match=r"`low <= high` must hold for 'lr', but got \(low=0.1, high=0.01\)"
    ):
        HPOConfig(space={"lr": {"low": 0.1, "high": 0.01}})
    with pytest.raises(ConfigError, match="unknown parameter"):
        HPOConfig(space={"momentum": [0.9]})
    cfg = HPOConfig(
        model="lenet300",
        space={"lr": {"low": 1e-5, "high": 1e-2, "log": True}, "epochs": [2]},
        n_trials=6,
        max_batches=4,
    )
    study = hpo(cfg, storage=f"sqlite:///{tmp_path / 'h.db'}")
    assert len(study.trials) == 6 and study.best_value > 0.2
    assert all(1e-5 <= t.params["lr"] <= 1e-2 for t in study.trials)


def test_cli_nas_writes_result(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("depth: [1]\nwidth: [8]\nkernel: [3]\nblock: [plain, dwsep]\n")
    out = tmp_path / "r.json"
    rc = main(
        [
            "search",
            "nas",
            "--storage",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--strategy",
            "random",
            "--space",
            str(space),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert json.loads(out.read_text())["best"]["arch"]["depth"] == 1
    assert (
        main(
            ["search", "nas", "--strategy", "anneal", "--storage", f"sqlite:///{tmp_path / 'c.db'}"]
        )
        == 2
    )
