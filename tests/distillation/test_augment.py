"""RandomAffine augmentation and DistillConfig(augment=...): seeded, label-preserving, wired in."""

import pytest
import torch

from slimkit.distillation import (
    AugmentedLoader,
    CachedTeacher,
    DistillConfig,
    LogitKD,
    RandomAffine,
    augment_bundle,
    distill,
)
from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.training import TrainConfig


def test_zero_affine_is_the_identity():
    x = torch.randn(3, 1, 8, 8)
    out = RandomAffine(max_shift=0.0, max_rotate=0.0, max_scale=0.0)(x)
    assert torch.allclose(out, x, atol=1e-5)


def test_same_seed_same_warps_other_seed_other_warps():
    x = torch.randn(4, 1, 28, 28)
    aug = RandomAffine(max_shift=2.0, max_rotate=10.0, max_scale=0.1)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, x)


def test_a_pure_shift_moves_the_image():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    out = RandomAffine(max_shift=3.0, max_rotate=0.0)(x, torch.Generator().manual_seed(0))
    # mass is kept (bilinear spreads it over <= 4 pixels) but it is no longer at the centre
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert out[0, 0, 4, 4] < 0.99


def test_non_image_batch_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"image batches \(B, C, H, W\), but got shape \(4, 64\)"):
        RandomAffine()(torch.randn(4, 64))
    with pytest.raises(ConfigError, match="max_rotate"):
        RandomAffine(max_rotate=400.0)


def test_augmented_loader_keeps_labels_length_and_shuffle_generator(digits_data):
    data = augment_bundle(digits_data, RandomAffine(), seed=3)
    assert isinstance(data.train, AugmentedLoader)
    assert len(data.train) == len(digits_data.train)
    assert data.train.generator is digits_data.train.generator
    assert data.test is digits_data.test
    assert augment_bundle(digits_data, None) is digits_data

    def first_batch(seed):
        digits_data.train.generator.manual_seed(0)
        return next(iter(augment_bundle(digits_data, RandomAffine(), seed=seed).train))

    digits_data.train.generator.manual_seed(0)
    x0, y0 = next(iter(digits_data.train))
    (xa, ya), (xb, _), (xc, _) = first_batch(5), first_batch(5), first_batch(6)
    assert torch.equal(ya, y0) and xa.shape == x0.shape
    assert torch.equal(xa, xb) and not torch.equal(xa, xc) and not torch.equal(xa, x0)


def test_distill_config_augment_round_trips():
    cfg = DistillConfig(augment=RandomAffine(max_shift=1.0, max_rotate=5.0))
    again = DistillConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert DistillConfig.from_dict({"losses": [{"kind": "logit"}]}).augment is None
    with pytest.raises(ConfigError, match="augment must be a mapping"):
        DistillConfig.from_dict({"augment": 3})
    with pytest.raises(ConfigError, match="RandomAffine got unknown option"):
        DistillConfig.from_dict({"augment": {"shift": 2}})


def test_distill_with_augment_trains_and_refuses_a_cached_teacher(digits_data, teacher):
    torch.manual_seed(0)
    student = build_model("lenet5", image_size=8, channels=(4, 8), hidden=16)
    before = [p.clone() for p in student.parameters()]
    cfg = DistillConfig(
        losses=(LogitKD(),),
        train=TrainConfig(epochs=1, max_batches=2),
        augment=RandomAffine(max_shift=1.0),
    )
    distill(student, teacher, digits_data, cfg)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert not any(m._forward_hooks for m in student.modules())
    assert not any(m._forward_hooks for m in teacher.modules())
    with pytest.raises(ConfigError, match="CachedTeacher memoises outputs per input"):
        distill(student, CachedTeacher(teacher), digits_data, cfg)
