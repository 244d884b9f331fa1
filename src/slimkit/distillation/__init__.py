"""Knowledge distillation: logit KD, FitNets hints, layer-wise and attention transfer.

import slimkit as sk
from slimkit.distillation import DistillConfig, LogitKD, AttentionTransfer
sk.distill(student, teacher, data, DistillConfig(losses=(LogitKD(temperature=4),)))
sk.distill(student, teacher, data, DistillConfig(augment=RandomAffine()))  # KD on jittered inputs
loss_fn = sk.distillation.kd_loss_fn(dense_model)   # recovery fine-tuning for other families
"""

from slimkit.distillation.augment import AugmentedLoader, RandomAffine, augment_bundle
from slimkit.distillation.hooks import FeatureHooks, HookState
from slimkit.distillation.losses import (
    LOSS_TYPES,
    AttentionTransfer,
    HintKD,
    KDKind,
    LayerPair,
    LayerwiseKD,
    LogitKD,
    attention_loss,
    attention_map,
    hint_loss,
    kd_kl,
    logit_kd_loss,
    make_adapter,
    relative_mse,
)
from slimkit.distillation.recovery import kd_loss_fn, recover
from slimkit.distillation.teachers import (
    CachedTeacher,
    OnnxTeacher,
    Teacher,
    TorchTeacher,
    as_teacher,
)
from slimkit.distillation.trainer import (
    DISTILLERS,
    DistillConfig,
    DistillLoss,
    agreement,
    distill,
    distill_,
)

__all__ = [
    "DISTILLERS",
    "LOSS_TYPES",
    "AttentionTransfer",
    "AugmentedLoader",
    "CachedTeacher",
    "DistillConfig",
    "DistillLoss",
    "FeatureHooks",
    "HintKD",
    "HookState",
    "KDKind",
    "LayerPair",
    "LayerwiseKD",
    "LogitKD",
    "OnnxTeacher",
    "RandomAffine",
    "Teacher",
    "TorchTeacher",
    "agreement",
    "as_teacher",
    "attention_loss",
    "attention_map",
    "augment_bundle",
    "distill",
    "distill_",
    "hint_loss",
    "kd_kl",
    "kd_loss_fn",
    "logit_kd_loss",
    "make_adapter",
    "recover",
    "relative_mse",
]
