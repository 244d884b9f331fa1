"""Schedules: AGP values, iterative/oneshot, fine-tuning with masks, loss_fn hook, YAML config."""

import pytest
import torch
import torch.nn.functional as F

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.pruning import GradualPruning, agp_sparsity, finalize_, get_masks, schedule_values
from slimkit.pruning.masks import overall_sparsity
from slimkit.pruning.methods import METHODS
from slimkit.testing import check_contract, tiny_models
from slimkit.training import TrainConfig

LAYERS = ["fc1", "fc2", "fc3"]


def test_agp_values_match_zhu_gupta():
    # s_t = s_f + (s_i - s_f)(1 - t/n)^3 with s_i=0, s_f=0.9, n=4
    expected = [0.9 - 0.9 * (1 - t / 4) ** 3 for t in range(1, 5)]
    assert schedule_values("agp", 0.9, 4) == pytest.approx(expected)
    assert schedule_values("agp", 0.9, 4)[:2] == pytest.approx([0.5203125, 0.7875])
    assert agp_sparsity(0, 4, 0.9, 0.2) == pytest.approx(0.2)
    assert agp_sparsity(4, 4, 0.9, 0.2) == pytest.approx(0.9)
    vals = schedule_values("agp", 0.95, 10, 0.1)
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))
    steps = [b - a for a, b in zip([0.1, *vals], vals, strict=False)]
    assert all(b < a for a, b in zip(steps, steps[1:], strict=False))  # prunes fast, then slowly


def test_iterative_and_oneshot_values():
    assert schedule_values("iterative", 0.8, 4) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert schedule_values("oneshot", 0.8, 4) == [0.8]
    with pytest.raises(ConfigError, match="kind must be one of"):
        schedule_values("cubic", 0.8, 4)


@pytest.mark.parametrize("kind", ["agp", "iterative", "oneshot"])
def test_gradual_reaches_final_sparsity_with_finetuning(digits, kind):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    cfg = GradualPruning(
        final_sparsity=0.8,
        steps=3,
        kind=kind,
        scope="global",
        finetune=TrainConfig(epochs=1, max_batches=3, lr=1e-2),
    )
    sk.prune_(model, cfg, data=digits)
    total = sum(model.get_submodule(n).weight.numel() for n in LAYERS)
    assert overall_sparsity(model, LAYERS) == round(0.8 * total) / total
    hist = model.slimkit_pruning["history"]
    assert [h["step"] for h in hist] == list(range(1, len(cfg.values()) + 1))
    assert hist[-1]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    masks = get_masks(model)
    finalize_(model)
    for n in LAYERS:  # fine-tuning never regrew a pruned weight
        assert (model.get_submodule(n).weight[~masks[n]] == 0).all()


def test_loss_fn_hook_used_for_finetuning_and_taylor(digits):
    calls = []

    def loss_fn(m, x, y, logits):
        calls.append(1)
        return F.cross_entropy(logits, y)

    model = sk.build_model("lenet300", image_size=8)
    cfg = GradualPruning(
        final_sparsity=0.5,
        steps=2,
        criterion="taylor",
        taylor_batches=1,
        finetune=TrainConfig(epochs=1, max_batches=2),
    )
    sk.prune_(model, cfg, data=digits, loss_fn=loss_fn)
    # per step: 1 Taylor batch + 2 fine-tuning batches; then 2 recovery epochs of 2 batches
    assert len(calls) == 2 * (1 + 2) + 2 * 2


def test_one_training_run_prunes_at_epoch_starts_then_recovers(digits):
    epochs_seen = []

    def loss_fn(m, x, y, logits):
        epochs_seen.append(round(overall_sparsity(m, LAYERS), 3))
        return F.cross_entropy(logits, y)

    model = sk.build_model("lenet300", image_size=8)
    cfg = GradualPruning(
        final_sparsity=0.8,
        steps=2,
        kind="iterative",
        finetune=TrainConfig(epochs=2, max_batches=1),
        recovery_epochs=3,
    )
    assert cfg.prune_epochs() == [0, 2]
    assert cfg.total_epochs() == 2 * 2 + 3
    sk.prune_(model, cfg, data=digits, loss_fn=loss_fn)
    # one batch per epoch: 2 epochs at 0.4, then 2 + 3 at the final 0.8 (masks hold throughout)
    assert epochs_seen == [0.4, 0.4, 0.8, 0.8, 0.8, 0.8, 0.8]
    hist = model.slimkit_pruning["history"]
    assert [(h["step"], h["epoch"]) for h in hist] == [(1, 0), (2, 2)]


def test_default_recovery_equals_pruning_phase_and_oneshot_gets_whole_phase():
    cfg = GradualPruning(steps=4, kind="oneshot", finetune=TrainConfig(epochs=2))
    assert cfg.prune_epochs() == [0]
    assert cfg.total_epochs() == 16
    cfg = GradualPruning(steps=4, kind="agp", finetune=TrainConfig(epochs=1), recovery_epochs=0)
    assert cfg.prune_epochs() == [0, 1, 2, 3]
    assert cfg.total_epochs() == 4
    with pytest.raises(ConfigError, match="recovery_epochs must be"):
        GradualPruning(recovery_epochs=-1)


def test_from_yaml_dict_and_errors():
    cfg = METHODS["gradual"].from_dict(
        {"final_sparsity": 0.9, "steps": 2, "kind": "agp", "finetune": {"epochs": 2, "lr": 0.01}}
    )
    assert cfg.finetune == TrainConfig(epochs=2, lr=0.01)
    assert cfg.to_dict()["finetune"]["epochs"] == 2
    with pytest.raises(ConfigError, match="final_sparsity must be in"):
        GradualPruning(final_sparsity=1.0)
    with pytest.raises(ConfigError, match="initial_sparsity must be <= final_sparsity"):
        GradualPruning(final_sparsity=0.5, initial_sparsity=0.6)
    with pytest.raises(ConfigError, match="unknown option"):
        METHODS["gradual"].from_dict({"final_sparsty": 0.9})
    with pytest.raises(ConfigError, match="needs data"):
        sk.prune_(sk.build_model("lenet300", image_size=8), GradualPruning(steps=1))


def test_contract_without_finetuning():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = GradualPruning(
        final_sparsity=0.3, steps=2, finetune=TrainConfig(epochs=0), recovery_epochs=0
    )
    check_contract(
        tiny_models()["lenet5"], lambda m: finalize_(sk.prune_(m, cfg)), x, min_sqnr_db=0.0
    )
