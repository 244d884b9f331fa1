"""Recovery: distillation from the dense model as the fine-tuning loss after compression.

Pruning schedules, quantization-aware fine-tuning, decomposition and the pipeline pass
``loss_fn=kd_loss_fn(dense_teacher)`` to :func:`slimkit.training.train`::

    teacher = copy.deepcopy(model)           # the dense model, before compressing
    sk.prune_(model, cfg)
    train(model, data, TrainConfig(epochs=2), loss_fn=kd_loss_fn(teacher), after_step=reapply_masks)

``kd_loss_fn`` snapshots an nn.Module teacher by default, so compressing ``model`` in place
afterwards cannot change the teacher even if the caller passed the same object.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.data.datasets import DataBundle
from slimkit.distillation.losses import LogitKD, logit_kd_loss
from slimkit.distillation.teachers import as_teacher
from slimkit.training import LossFn, TrainConfig, train


def kd_loss_fn(
    teacher: Any, temperature: float = 4.0, alpha: float = 0.9, *, snapshot: bool = True
) -> LossFn:
    """A ``loss_fn(model, x, y, logits) -> loss`` doing logit KD from ``teacher``.

    ``teacher`` is anything :func:`slimkit.distillation.as_teacher` accepts (module, .onnx,
    model file, ORT session). ``temperature <= 0`` or ``alpha`` outside [0, 1] is a ConfigError.
    """
    cfg = LogitKD(temperature=temperature, alpha=alpha)  # validates
    if snapshot and isinstance(teacher, nn.Module):
        teacher = copy.deepcopy(teacher)
    wrapped = as_teacher(teacher)

    def loss_fn(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        # logits: (B, classes) of the student being fine-tuned; teacher runs without grad.
        return logit_kd_loss(logits, wrapped(x), y, cfg.temperature, cfg.alpha)

    loss_fn.teacher = wrapped  # type: ignore[attr-defined]
    return loss_fn


def recover(
    model: nn.Module,
    teacher: Any,
    data: DataBundle,
    cfg: TrainConfig | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    after_step: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Fine-tune a compressed ``model`` in place with KD from ``teacher``; returns it (eval)."""
    loss_fn = kd_loss_fn(teacher, temperature, alpha)
    return train(
        model,
        data,
        cfg or TrainConfig(epochs=1),
        loss_fn=loss_fn,
        after_step=after_step,
        description="recover",
    )
