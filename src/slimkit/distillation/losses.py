"""Distillation losses: pure functions on tensors plus the frozen configs that choose them.

- Logit KD (Hinton 2015): ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(student, y)``.
- Hint KD (FitNets, Romero 2015): MSE between an adapted student feature and a teacher feature;
  the adapter (1x1 conv or linear, learned) exists only where the shapes differ.
- Layer-wise KD: several student/teacher layer pairs, each with a weight; each term is the MSE
  relative to the teacher feature's mean square so layers of different scales are comparable.
- Attention transfer (Zagoruyko & Komodakis 2017): L2 distance of normalised spatial attention
  maps ``A = normalize(mean_c |F|^p)``; channels may differ, spatial sizes must match.

Every feature term is exactly zero when the student feature equals the teacher feature.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import SlimConfig, check_range
from slimkit.errors import ConfigError


class KDKind(str, enum.Enum):
    """Names of the distillation losses at the YAML/CLI boundary."""

    LOGIT = "logit"
    HINT = "hint"
    LAYERWISE = "layerwise"
    ATTENTION = "attention"


# ---------------------------------------------------------------------------- pure loss functions


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean; logits (B, classes).

    The T^2 factor keeps the soft-target gradients at the scale of the hard-label ones.
    """
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)  # (B, C)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=1)  # (B, C)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * (t * t)


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton KD mixed with hard-label cross-entropy by ``alpha`` (1.0 = soft targets only)."""
    loss = alpha * kd_kl(student_logits, teacher_logits, temperature)
    if alpha < 1.0 and labels is not None:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits.float(), labels)
    return loss


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint: mean squared error of (already adapted) features of equal shape."""
    return F.mse_loss(student_feat.float(), teacher_feat.float())


def relative_mse(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """MSE divided by the teacher feature's mean square (scale-free layer-wise term)."""
    t = teacher_feat.float()
    return F.mse_loss(student_feat.float(), t) / (t.pow(2).mean() + eps)


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of |F|^p, L2-normalised per sample."""
    if feat.dim() != 4:
        raise ConfigError(
            f"attention transfer needs (B, C, H, W) feature maps, but got shape {tuple(feat.shape)}; "
            "pair convolutional layers"
        )
    return F.normalize(feat.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    """Mean squared distance of the normalised attention maps (the paper's at_loss)."""
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()


# ---------------------------------------------------------------------------- adapters


def make_adapter(
    student_shape: Sequence[int], teacher_shape: Sequence[int], *, allow: bool, where: str
) -> nn.Module | None:
    """A learned map from the student feature shape to the teacher's (shapes without batch).

    ``None`` when the shapes already match. (C_s, H, W) -> (C_t, H, W) is a 1x1 conv;
    (..., D_s) -> (..., D_t) is a linear layer. Anything else, or any mismatch with
    ``allow=False``, is a ConfigError that states both shapes.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if s == t:
        return None
    if not allow:
        raise ConfigError(
            f"{where}: student feature shape {s} differs from teacher feature shape {t} and "
            "adapters are off; set adapter=True or pair layers of equal shape"
        )
    if len(s) == 3 and len(t) == 3 and s[1:] == t[1:]:
        return nn.Conv2d(s[0], t[0], kernel_size=1)  # (B, C_s, H, W) -> (B, C_t, H, W)
    if len(s) >= 1 and len(s) == len(t) and s[:-1] == t[:-1]:
        return nn.Linear(s[-1], t[-1])  # (B, ..., D_s) -> (B, ..., D_t)
    raise ConfigError(
        f"{where}: no adapter maps student feature shape {s} to teacher feature shape {t}; "
        "a 1x1 conv needs equal spatial sizes and a linear layer equal leading dims. "
        "Pair layers whose outputs agree apart from the channel/feature dimension"
    )


# ---------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class LayerPair(SlimConfig):
    """A student layer matched to a teacher layer (fully-qualified module names) with a weight."""

    student: str
    teacher: str
    weight: float = 1.0

    def validate(self) -> None:
        for field in ("student", "teacher"):
            value = getattr(self, field)
            if not isinstance(value, str):
                raise ConfigError(f"layer pair {field} must be a layer name, but got {value!r}")
        check_range("pair weight", self.weight, 0.0, 1e6)

    @classmethod
    def coerce(cls, value: Any) -> LayerPair:
        """Accept a LayerPair, ``(student, teacher[, weight])`` or a dict with those keys."""
        if isinstance(value, LayerPair):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, (tuple, list)) and len(value) in (2, 3):
            return cls(*value)
        if isinstance(value, str) and "=" in value:  # CLI form "student_layer=teacher_layer"
            s, _, t = value.partition("=")
            return cls(s.strip(), t.strip())
        raise ConfigError(
            f"a layer pair must be (student, teacher[, weight]), a dict or 'student=teacher', "
            f"but got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class LogitKD(SlimConfig):
    """Hinton KD on the logits; works with any teacher, including an ONNX Runtime session."""

    kind = "logit"
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target term; 1 - alpha goes to hard-label CE

    def validate(self) -> None:
        if isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool):
            if self.temperature <= 0:
                raise ConfigError(
                    f"temperature must be > 0, but got {self.temperature}; typical values are 2..8"
                )
        check_range("temperature", self.temperature, 0.0, 1000.0, low_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _FeatureKD(SlimConfig):
    """Shared part of the feature losses: layer pairs and a weight on the summed term."""

    pairs: tuple[LayerPair, ...] = ()
    weight: float = 1.0

    def validate(self) -> None:
        if not isinstance(self.pairs, tuple) or not self.pairs:
            raise ConfigError(
                f"{type(self).__name__} needs at least one (student, teacher) layer pair, "
                f"but got {self.pairs!r}"
            )
        object.__setattr__(self, "pairs", tuple(LayerPair.coerce(p) for p in self.pairs))
        check_range("weight", self.weight, 0.0, 1e6)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["pairs"] = [p.to_dict() for p in self.pairs]
        return out

    def pair_loss(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class HintKD(_FeatureKD):
    """FitNets hints: MSE(adapter(student_feat), teacher_feat) per pair."""

    kind = "hint"
    adapter: bool = True

    def pair_loss(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return hint_loss(student_feat, teacher_feat)


@dataclasses.dataclass(frozen=True)
class LayerwiseKD(_FeatureKD):
    """Several weighted layer pairs; each term is the MSE relative to the teacher's mean square."""

    kind = "layerwise"
    adapter: bool = True

    def pair_loss(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return relative_mse(student_feat, teacher_feat)


@dataclasses.dataclass(frozen=True)
class AttentionTransfer(_FeatureKD):
    """Attention transfer; ``weight`` 500 is the paper's beta/2 with beta = 1000."""

    kind = "attention"
    p: float = 2.0
    weight: float = 500.0

    def validate(self) -> None:
        super().validate()
        check_range("p", self.p, 0.0, 16.0, low_open=True)

    def pair_loss(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return attention_loss(student_feat, teacher_feat, self.p)


LossConfig = LogitKD | HintKD | LayerwiseKD | AttentionTransfer
FeatureConfig = HintKD | LayerwiseKD | AttentionTransfer

LOSS_TYPES: dict[KDKind, type[SlimConfig]] = {
    KDKind.LOGIT: LogitKD,
    KDKind.HINT: HintKD,
    KDKind.LAYERWISE: LayerwiseKD,
    KDKind.ATTENTION: AttentionTransfer,
}
