"""Network slimming: the L1-on-gamma loss, training shrinks gammas, global |gamma| removal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.pruning import NetworkSlimming, bn_l1_loss
from slimkit.testing import check_contract, randomize_batchnorm
from slimkit.training import TrainConfig


def _gamma_l1(model) -> float:
    return sum(
        float(m.weight.detach().abs().sum())
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_bn_l1_loss_is_ce_plus_penalty_times_gamma_l1():
    model = randomize_batchnorm(build_model("resnet", image_size=8))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    got = bn_l1_loss(1e-3)(model, x, y, logits)
    want = F.cross_entropy(logits, y) + 1e-3 * _gamma_l1(model)
    assert abs(float(got.detach()) - want) < 1e-5


def test_training_with_penalty_shrinks_gammas(digits):
    cfg = TrainConfig(epochs=1, max_batches=10, lr=1e-2)
    plain = build_model("resnet", image_size=8, seed=0)
    slim = build_model("resnet", image_size=8, seed=0)
    sk.train(plain, digits, cfg)
    sk.train(slim, digits, cfg, loss_fn=bn_l1_loss(1e-2))
    # AdamW moves each gamma by <= lr per step, so 10 steps can shrink ~1.0 gammas by <= 10%
    assert _gamma_l1(slim) < 0.97 * _gamma_l1(plain)


def test_slimming_removes_smallest_gammas_globally_with_layer_cap():
    model = randomize_batchnorm(build_model("mobilenetv2", image_size=8).eval())
    x = torch.randn(2, 1, 8, 8)
    result_holder = []

    def compress(m):
        sk.prune_(m, NetworkSlimming(ratio=0.4, max_layer_ratio=0.5), example_inputs=x)
        result_holder.append(m.slimkit_channel_history[-1])

    check_contract(model, compress, x, onnx_atol=1e-4)
    removed = result_holder[0]["removed"]
    assert all(v > 0 for v in removed.values())
    pruned = build_model("mobilenetv2", image_size=8)
    total_before = sum(
        m.num_features for m in pruned.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert sum(removed.values()) > 0 and total_before > 0


def test_slimming_trains_then_prunes(digits):
    model = build_model("resnet", image_size=8, seed=0)
    cfg = NetworkSlimming(ratio=0.5, penalty=1e-3, train={"epochs": 1, "max_batches": 5})
    assert isinstance(cfg.train, TrainConfig)
    sk.prune_(model, cfg, data=digits)
    hist = model.slimkit_channel_history[-1]
    total = 16 + 16 + 32 + 32 + 64 + 64  # channel groups of the tiny ResNet (classifier excluded)
    assert sum(hist["removed"].values()) == math.floor(0.5 * total)
    assert sk.evaluate_accuracy(model, digits.test) >= 0.0


def test_slimming_config_errors():
    with pytest.raises(ConfigError, match="penalty must be in"):
        NetworkSlimming(penalty=-1.0)
    with pytest.raises(ConfigError, match="unknown option"):
        NetworkSlimming(train={"epochz": 1})
    with pytest.raises(ConfigError, match="needs data=<DataBundle>"):
        sk.prune_(build_model("resnet", image_size=8), NetworkSlimming(train={"epochs": 1}))


def test_a_target_typo_is_refused_before_the_l1_training(monkeypatch):
    from slimkit.errors import TargetError
    from slimkit.pruning import slimming

    trained = []
    monkeypatch.setattr(slimming, "train", lambda *a, **k: trained.append(1))
    model = build_model("resnet", image_size=8)
    data = sk.load_dataset("digits", train_samples=64, test_samples=32)
    cfg = NetworkSlimming(ratio=0.5, train={"epochs": 3}, targets=["layers.0.conv9"])
    with pytest.raises(TargetError, match="layers.0.conv9"):
        sk.prune_(model, cfg, data=data)
    assert trained == []  # was: 3 epochs of L1 training on the model first, in place


def test_the_no_batchnorm_refusal_names_no_cli_flag():
    # raised from prune_ and recipes as well as the CLI, it named the CLI's "--method channel"
    with pytest.raises(ConfigError, match="no BatchNorm layer; use ChannelPruning") as info:
        sk.prune_(build_model("lenet300", image_size=8), NetworkSlimming(ratio=0.5))
    assert "ChannelPruning (method channel)" in str(info.value)
    assert "--" not in str(info.value)
