"""Each loss is exactly zero (KL at its minimum 0) when the student equals the teacher."""

import copy

import pytest
import torch
import torch.nn.functional as F

from slimkit.distillation import (
    AttentionTransfer,
    DistillLoss,
    HintKD,
    LayerPair,
    LayerwiseKD,
    LogitKD,
    attention_loss,
    attention_map,
    hint_loss,
    kd_kl,
    kd_loss_fn,
    logit_kd_loss,
    relative_mse,
)
from slimkit.errors import ConfigError
from slimkit.models import build_model


def test_pure_losses_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g) * 5
    feat = torch.randn(8, 6, 5, 5, generator=g)
    assert float(kd_kl(logits, logits.clone(), 4.0)) == 0.0
    assert float(logit_kd_loss(logits, logits.clone(), None, 4.0, alpha=1.0)) == 0.0
    assert float(hint_loss(feat, feat.clone())) == 0.0
    assert float(relative_mse(feat, feat.clone())) == 0.0
    assert float(attention_loss(feat, feat.clone())) == 0.0
    # Attention ignores channel count: the same map from 6 and 12 channels (duplicated) -> 0.
    assert float(attention_loss(feat, torch.cat([feat, feat], 1))) == pytest.approx(0.0, abs=1e-12)


def test_kd_kl_matches_formula_and_is_positive():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    temp = 3.0
    pt = F.softmax(t / temp, 1)
    manual = (pt * (pt.log() - F.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
    assert float(kd_kl(s, t, temp)) == pytest.approx(float(manual), rel=1e-5)
    assert float(kd_kl(s, t, temp)) > 0.0
    # alpha mixes in hard-label CE exactly.
    y = torch.randint(0, 10, (16,), generator=g)
    mixed = logit_kd_loss(s, t, y, temp, alpha=0.7)
    expect = 0.7 * kd_kl(s, t, temp) + 0.3 * F.cross_entropy(s, y)
    assert float(mixed) == pytest.approx(float(expect), rel=1e-6)


def test_attention_map_is_unit_norm():
    feat = torch.randn(4, 3, 7, 7)
    amap = attention_map(feat, p=2)
    assert amap.shape == (4, 49)
    assert torch.allclose(amap.norm(dim=1), torch.ones(4), atol=1e-6)


def test_distill_loss_zero_for_identical_student():
    torch.manual_seed(0)
    teacher = build_model("lenet5", image_size=8).eval()
    student = copy.deepcopy(teacher)
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    configs = [
        LogitKD(temperature=4.0, alpha=1.0),
        HintKD(pairs=[("conv2", "conv2")]),
        LayerwiseKD(pairs=[("pool1", "pool1", 1.0), ("fc1", "fc1", 0.5)]),
        AttentionTransfer(pairs=["conv1=conv1", "conv2=conv2"]),
    ]
    for cfg in configs:
        loss = DistillLoss(student, teacher, [cfg])
        with loss.attached(x):
            assert len(loss.adapters) == 0  # equal shapes: no adapter, identity
            logits = student(x)
            value = loss(student, x, y, logits)
        # The KD term itself (logit at alpha=1, or the feature term next to hard-label CE).
        term = loss.last["logit"] if isinstance(cfg, LogitKD) else loss.last[f"{cfg.kind}_0"]
        assert term == 0.0, f"{type(cfg).__name__} gave {term}"
        if isinstance(cfg, LogitKD):
            assert float(value.detach()) == 0.0
        else:  # total = CE + weight * 0
            assert float(value.detach()) == pytest.approx(loss.last["ce"], rel=1e-6)
    fn = kd_loss_fn(teacher, temperature=2.0, alpha=1.0)
    assert float(fn(student, x, y, student(x)).detach()) == 0.0


@pytest.mark.parametrize("temperature", [0, -1.0, 0.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ConfigError, match=r"temperature must be > 0, but got"):
        LogitKD(temperature=temperature)
    with pytest.raises(ConfigError, match=r"temperature must be > 0"):
        kd_loss_fn(build_model("lenet300", image_size=8), temperature=temperature)


def test_bad_config_values():
    with pytest.raises(ConfigError, match=r"alpha must be in \[0.0, 1.0\], but got 1.5"):
        LogitKD(alpha=1.5)
    with pytest.raises(ConfigError, match="at least one"):
        HintKD(pairs=())
    with pytest.raises(ConfigError, match="layer pair"):
        HintKD(pairs=[42])
    assert HintKD(pairs=[{"student": "a", "teacher": "b", "weight": 2.0}]).pairs == (
        LayerPair("a", "b", 2.0),
    )
