"""Bad search input (hpo space values, model, dataset, NAS space options) is refused before the
study is created: a ConfigError that names the parameter and value, and no database file."""

import optuna
import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import HPOConfig, NASConfig, SearchSpace, hpo, nas


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"lr": {"low": -1, "high": 0.1, "log": True}},
            r"`low > 0` must hold for 'lr' on a log scale \(log: true\), but got \(low=-1, high=0.1\)",
        ),
        ({"weight_decay": {"low": 0, "high": 0.1, "log": True}}, "`low > 0` must hold"),
        ({"lr": {"low": 1e-4, "high": 1e-2, "log": "yes"}}, "lr log must be true or false"),
        ({"lr": {"low": "a", "high": 0.1}}, "lr low must be a finite number, but got 'a'"),
        ({"lr": {"low": -0.5, "high": 0.1}}, r"lr low must be in \(0.0, 10.0\], but got -0.5"),
        ({"lr": ["a"]}, "choice 'a' of 'lr' must be a finite number"),
        ({"batch_size": [0]}, "choice 0 of 'batch_size' must be in 1..65536, but got 0"),
        ({"batch_size": [32.5]}, "must be an integer"),
        ({"epochs": {"low": 1, "high": 3}}, "'epochs' takes whole numbers"),
        ({"bits": [9]}, "choice 9 of 'bits' must be in 1..8"),
        ({"sparsity": {"low": 0.5, "high": 1.0}}, r"sparsity high must be in \[0.0, 1.0\)"),
        ({"alpha": [1.5]}, "alpha"),
        ({"epochs": [True]}, "must be an integer"),
        ({}, "an hpo space must map parameter names"),
        (None, "an hpo space must map parameter names"),
        ({1: [2]}, r"unknown parameter\(s\) \[1\]"),
    ],
)
def test_hpo_space_values_are_checked_up_front(space, message):
    with pytest.raises(ConfigError, match=message):
        HPOConfig(space=space)


def test_hpo_model_strategy_and_dataset_are_checked_before_the_study(tmp_path):
    with pytest.raises(ConfigError, match="unknown zoo model 'nope'; valid names are"):
        HPOConfig(model="nope")
    with pytest.raises(ConfigError, match="strategy"):
        HPOConfig(strategy="anneal")
    db = tmp_path / "h.db"
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        hpo(HPOConfig(dataset="nope", n_trials=1), storage=f"sqlite:///{db}")
    assert not db.exists()


def test_hpo_model_that_cannot_run_on_the_images_is_refused_before_the_study(tmp_path, monkeypatch):
    import torch

    from slimkit.models import zoo

    class Broken(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)  # (B, 1, 8, 8) cannot go through Linear(3, 2)

    monkeypatch.setitem(zoo.ZOO, "broken", Broken)
    db = tmp_path / "h.db"
    with pytest.raises(ConfigError, match="zoo model 'broken' does not run on 'digits' images"):
        hpo(HPOConfig(model="broken", n_trials=1), storage=f"sqlite:///{db}")
    assert not db.exists()


def test_cli_hpo_bad_log_space_exits_2_without_traceback_or_database(tmp_path, capfd):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: -1, high: 0.1, log: true}\n")
    db = tmp_path / "h.db"
    rc = main(["search", "hpo", "--space", str(space), "--storage", f"sqlite:///{db}"])
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err and "`low > 0` must hold for 'lr'" in err
    assert not db.exists()


def test_cli_hpo_bad_model_exits_2_and_the_fixed_rerun_works(tmp_path, capfd):
    db = tmp_path / "h.db"
    args = ["search", "hpo", "--storage", f"sqlite:///{db}", "--trials", "1"]
    assert main([*args, "--model", "nope"]) == 2
    err = capfd.readouterr().err
    assert "unknown zoo model 'nope'" in err and "Traceback" not in err
    assert not db.exists()
    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.01]\nepochs: [1]\n")
    assert main([*args, "--space", str(space)]) == 0
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["slimkit-hpo"]


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"depth": [0, 1]}, "option 0 of choice 'depth' must be in 1..6, but got 0"),
        ({"width": [8, 0]}, "option 0 of choice 'width' must be in 1..4096"),
        ({"width": [True]}, "must be an integer"),
        ({"kernel": [3.5]}, "must be an integer"),
        ({"block": ["plain", "conv"]}, r"option 'conv' of choice 'block' is not a block type"),
        ({"bogus": [1, 2]}, r"NAS space has unknown choice\(s\) \['bogus'\]"),
        ({"image_size": [8]}, r"unknown choice\(s\) \['image_size'\]"),
        ({"kernel": [2, 3], "block": ["residual"]}, r"kernel options \[2\] are even"),
    ],
)
def test_nas_space_options_are_checked_before_the_study(choices, message, digits, tmp_path):
    db = tmp_path / "n.db"
    with pytest.raises(ConfigError, match=message):
        nas(digits, NASConfig(n_trials=1), space=SearchSpace(choices), storage=f"sqlite:///{db}")
    assert not db.exists()


def test_nas_config_values_are_checked():
    with pytest.raises(ConfigError, match="lr must be in"):
        NASConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="strategy"):
        NASConfig(strategy="anneal")


def test_even_kernels_without_the_residual_block_are_allowed():
    from slimkit.search.nas import check_space

    check_space(SearchSpace({"kernel": (2, 3), "block": ("plain", "dwsep")}))
    check_space(SearchSpace({"kernel": (2, 3)}))  # block defaults to plain
