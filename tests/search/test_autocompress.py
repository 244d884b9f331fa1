import pytest
import torch
from torch import nn

from slimkit.config import select_modules
from slimkit.errors import ConfigError
from slimkit.export import slimformat
from slimkit.models import build_model
from slimkit.search.autocompress import AutoCompressConfig, auto_compress
from slimkit.search.budget import REST, choice_bytes, layer_groups, plan_budget
from slimkit.search.compress_trial import compress_trial
from slimkit.training import TrainConfig, evaluate_accuracy, train

# Tiny trials: one pruning step of 2 batches, 1 centroid batch.
FAST = {"prune_steps": 1, "finetune_epochs": 1, "centroid_epochs": 1, "max_batches": 2}


@pytest.fixture(scope="module")
def trained():
    from slimkit.data import load_dataset

    data = load_dataset("digits")
    model = build_model("lenet300", image_size=8, seed=0)
    train(model, data, TrainConfig(epochs=2, lr=3e-3))
    return model, data


def test_budget_is_required_and_validated():
    with pytest.raises(ConfigError, match="needs a budget"):
        AutoCompressConfig()
    with pytest.raises(ConfigError, match=r"bits\[\] must be in 1..8, but got 9"):
        AutoCompressConfig(max_bytes=1000, bits=(4, 9))
    with pytest.raises(ConfigError, match="bits must list at least one"):
        AutoCompressConfig(max_bytes=1000, bits=())


def test_largest_layers_get_their_own_group_and_the_rest_share_one(trained):
    model, _ = trained
    layers = select_modules(model)  # fc1 (64*300) > fc2 (300*100) > fc3 (100*10)
    assert layer_groups(layers, 4) == {"fc1": ["fc1"], "fc2": ["fc2"], "fc3": ["fc3"]}
    assert layer_groups(layers, 2) == {"fc2": ["fc2"], REST: ["fc1", "fc3"]}


def test_first_trial_fills_the_budget_and_ranges_start_where_a_group_could_fit(trained):
    model, _ = trained
    layers = select_modules(model)
    cfg = AutoCompressConfig(max_bytes=12_000, bits=(3, 4, 6), fill=0.9)
    plan = plan_budget(model, layers, cfg)
    assert plan.start["bits_fc1"] == 4
    assert plan.start_bytes == choice_bytes(model, plan.groups, plan.start) <= 0.9 * 12_000
    # A little less sparse and it would be over the 90 % target (bisection to 2 grid steps).
    denser = {
        k: v - 0.02 if k.startswith("sparsity_") and v >= 0.02 else v for k, v in plan.start.items()
    }
    assert choice_bytes(model, plan.groups, denser) > plan.start_bytes
    for g in plan.groups:
        assert 0.0 <= plan.low[g] <= plan.start[f"sparsity_{g}"] <= plan.high == 0.99
    assert plan.low["fc3"] == 0.0 < plan.low["fc2"]  # 1,000 weights fit anyway; 30,000 do not


def test_meets_a_loose_budget_and_saves_the_real_artifact(trained, tmp_path):
    model, data = trained
    cfg = AutoCompressConfig(
        max_bytes=60_000, max_accuracy_drop=0.2, n_trials=2, bits=(4, 6), **FAST
    )
    res = auto_compress(model, data, cfg, tmp_path, storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert res.met and "met the goal" in res.message
    best = tmp_path / "best.slim"
    assert best.stat().st_size == res.best["bytes"] <= 60_000
    loaded = slimformat.load(best)
    assert evaluate_accuracy(loaded, data.test) == pytest.approx(res.best["accuracy"], abs=1e-9)
    # Trial 0 is the budget plan's start: global-magnitude sparsities at the bits nearest 4.
    first = next(r for r in res.trials if r["number"] == 0)
    assert first["choice"]["bits_fc1"] == 4 and first["stage"] == "trained"
    assert res.pareto and all(r in res.trials for r in res.pareto)


def test_resuming_adds_trials_without_redoing_or_re_enqueueing(trained, tmp_path):
    model, data = trained
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cfg = AutoCompressConfig(max_bytes=60_000, n_trials=2, bits=(4,), startup_trials=1, **FAST)
    first = auto_compress(model, data, cfg, tmp_path, storage=url, study_name="r")
    more = AutoCompressConfig.from_dict({**cfg.to_dict(), "n_trials": 3})
    second = auto_compress(model, data, more, tmp_path, storage=url, study_name="r")
    assert [r["number"] for r in second.trials] == [0, 1, 2]
    for a, b in zip(first.trials, second.trials[:2], strict=True):
        assert a["choice"] == b["choice"] and a["bytes"] == b["bytes"]
    assert second.trials[2]["choice"] != second.trials[0]["choice"]
    # another study into the same folder overwrote trial_N.slim and best.slim of this one
    before = {p.name: p.read_bytes() for p in (tmp_path / "trials").iterdir()}
    with pytest.raises(ConfigError, match=r"holds the trials and best.slim of study 'r'"):
        auto_compress(model, data, cfg, tmp_path, storage=url, study_name="s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "trials").iterdir()} == before


def test_a_model_file_the_run_would_overwrite_is_refused(trained, tmp_path):
    from slimkit.search.autocompress import _check_out_is_this_studys

    model, data = trained
    cfg = AutoCompressConfig(max_bytes=60_000, n_trials=1, bits=(4,), **FAST)
    source = {"model": str(tmp_path / "auto" / "best.slim"), "sha256": "0" * 64}
    source |= {"dataset": "digits", "batch_size": 64, "image_size": 8}
    with pytest.raises(ConfigError, match=r"is one the run writes into --out"):
        auto_compress(model, data, cfg, tmp_path / "auto", source=source)
    trial = {"model": str(tmp_path / "auto" / "trials" / "trial_0.slim")}
    with pytest.raises(ConfigError, match=r"is one the run writes into --out"):
        _check_out_is_this_studys(tmp_path / "auto", "s", trial)
    beside = {"model": str(tmp_path / "auto" / "model.safetensors")}  # not written: fine
    _check_out_is_this_studys(tmp_path / "auto", "s", beside)


def test_over_budget_choice_is_measured_untrained_and_the_closest_is_saved(trained, tmp_path):
    model, data = trained
    cfg = AutoCompressConfig(max_bytes=100, n_trials=2, bits=(2,), **FAST)
    res = auto_compress(model, data, cfg, tmp_path, storage=f"sqlite:///{tmp_path / 'b.db'}")
    assert not res.met
    assert "missed the size budget by" in res.message and "bytes" in res.message
    assert all(r["stage"].startswith("over budget before training") for r in res.trials)
    assert (tmp_path / "best.slim").exists()
    assert res.best["miss"]["bytes"] == res.best["bytes"] - 100


def test_a_check_that_says_hopeless_stops_fine_tuning_at_that_step(trained):
    model, data = trained
    groups = {"fc1": ["fc1"], "fc2": ["fc2"], "fc3": ["fc3"]}
    choice = {f"{k}_{g}": v for g in groups for k, v in (("sparsity", 0.9), ("bits", 4))}
    cfg = AutoCompressConfig(max_bytes=60_000, **{**FAST, "prune_steps": 3})
    seen = []

    def check(step: int, m: nn.Module) -> bool:
        seen.append((step, float((m.fc1.weight == 0).float().mean())))
        return True

    compressed, stopped = compress_trial(model, data, groups, choice, cfg, check=check)
    # Stopped after step 1 of 3, at the AGP schedule's first target 0.9 * (1 - (2/3)^3).
    assert stopped == 1 and len(seen) == 1
    assert seen[0][1] == pytest.approx(0.9 * (1 - (2 / 3) ** 3), abs=1e-3)
    # The artifact still has the chosen sparsity (its size is the choice's), k-means at 4 bits.
    assert float((compressed.fc1.weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    assert compressed.fc1.weight.unique().numel() <= 16


def test_a_searched_rank_factors_the_layer_then_prunes_and_quantizes_both_factors(trained):
    model, data = trained
    groups = {"fc1": ["fc1"], "fc2": ["fc2"], "fc3": ["fc3"]}
    choice = {f"{k}_{g}": v for g in groups for k, v in (("sparsity", 0.5), ("bits", 3))}
    choice["rank_fc1"] = 0.5
    cfg = AutoCompressConfig(max_bytes=60_000, rank_ratios=(1.0, 0.5), **FAST)
    compressed, stopped = compress_trial(model, data, groups, choice, cfg)
    assert stopped is None
    first, second = compressed.fc1[0], compressed.fc1[1]  # (32, 64) then (300, 32)
    assert first.weight.shape == (32, 64) and second.weight.shape == (300, 32)
    both = torch.cat([first.weight.flatten(), second.weight.flatten()])
    assert float((both == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert first.weight.unique().numel() <= 8 and second.weight.unique().numel() <= 8


def test_auto_cli_checks_the_drop_in_points_and_the_model_size_before_any_work(tmp_path, capsys):
    from slimkit.cli import main

    model = tmp_path / "digits.safetensors"
    argv = ["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out", str(model)]
    assert main(argv) == 0
    out = tmp_path / "auto"
    auto = ["search", "auto", str(model), "--out", str(out), "--max-bytes", "1000"]
    assert main([*auto, "--dataset", "digits", "--max-accuracy-drop", "-1"]) == 2
    assert "in percentage points and must be in 0..100, but got -1" in capsys.readouterr().err
    # an 8x8 model fed MNIST failed in torch's first matmul
    assert main([*auto, "--dataset", "mnist5k"]) == 2
    assert "takes 8x8 images, but --dataset mnist5k gives 28x28" in capsys.readouterr().err
    assert not out.exists()


def test_auto_cli_refuses_a_zoo_name(tmp_path, capsys):
    from slimkit.cli import main

    out = tmp_path / "auto"
    # an untrained model "met the goal" against its own ~10 % accuracy (exit 0)
    assert main(["search", "auto", "lenet5", "--out", str(out), "--max-bytes", "20000"]) == 2
    assert "builds an untrained model; train it first" in capsys.readouterr().err
    assert not out.exists()
