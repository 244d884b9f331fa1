"""Hooks by layer name: strict lifecycle, near-match errors, no residue (even on errors)."""

import pytest
import torch

from slimkit.distillation import DistillConfig, FeatureHooks, HintKD, HookState, LogitKD, distill
from slimkit.errors import SlimkitError, TargetError
from slimkit.models import build_model
from slimkit.training import TrainConfig


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_lifecycle_and_capture():
    model = build_model("lenet5", image_size=8)
    hooks = FeatureHooks(model, ["conv2", "fc1", "conv2"])
    assert hooks.names == ["conv2", "fc1"] and hooks.state is HookState.IDLE
    with pytest.raises(SlimkitError, match="not attached"):
        hooks.get("conv2")
    with hooks:
        assert all_hooks(model) == 2
        with pytest.raises(SlimkitError, match="attach once"):
            hooks.attach()
        model(torch.zeros(3, 1, 8, 8))
        assert hooks.get("conv2").shape == (3, 50, 4, 4)  # 8x8 LeNet-5 pads by 2
        assert hooks.get("fc1").shape == (3, 500)
    assert hooks.state is HookState.REMOVED and all_hooks(model) == 0
    with pytest.raises(SlimkitError, match="attach once"):
        hooks.attach()
    hooks.remove()  # safe twice


def test_unknown_layer_lists_near_matches():
    model = build_model("lenet5", image_size=8)
    with pytest.raises(TargetError, match=r"no layer named 'conv_2'; near matches: \[.*'conv2'"):
        FeatureHooks(model, ["conv_2"])
    with pytest.raises(TargetError, match="near matches"):
        distill(
            model,
            build_model("lenet5", image_size=8),
            None,  # type: ignore[arg-type]
            DistillConfig(losses=(HintKD(pairs=[("conv2", "conv9")]),)),
        )
    assert all_hooks(model) == 0


def test_no_residue_after_training_and_after_error(digits_data, teacher):
    student = build_model("lenet300", image_size=8)
    cfg = DistillConfig(
        losses=(LogitKD(), HintKD(pairs=[("fc2", "fc1")])),
        train=TrainConfig(epochs=1, max_batches=3),
    )
    distill(student, teacher, digits_data, cfg)
    assert all_hooks(student) == 0 and all_hooks(teacher) == 0
    assert not teacher.training

    def boom(model):
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        distill(student, teacher, digits_data, cfg, after_step=boom)
    assert all_hooks(student) == 0 and all_hooks(teacher) == 0
