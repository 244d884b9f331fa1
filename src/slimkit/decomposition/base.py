"""Shared pieces of the decomposition techniques.

- :class:`Recovery`: optional fine-tuning or logit distillation after layers are replaced;
- :class:`LowRankConfig`: the base config (rank rule, targets/ignore, skip rule, recovery) with a
  ``from_dict`` that accepts YAML/CLI shorthands such as ``{"ratio": 0.5}`` or ``{"rank": 8}``;
- :func:`replace_layers`: the per-layer loop (choose, factorise, keep only when it shrinks),
  which records a plan keyed by layer name in the JSON attribute ``model.slimkit_decomposition``
  (saved and restored by :mod:`slimkit.io` with the model).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import (
    SlimConfig,
    check_int,
    check_range,
    parse_enum,
    select_modules,
    set_module,
)
from slimkit.decomposition.bn_recalibration import recalibrate_batchnorm
from slimkit.decomposition.rank import RankRule, RankSpec
from slimkit.errors import ConfigError, NumericsError

PLAN_ATTR = "slimkit_decomposition"


class RecoveryMode(enum.StrEnum):
    NONE = "none"
    FINETUNE = "finetune"  # cross-entropy on the training labels
    DISTILL = "distill"  # KL to the undecomposed model's logits (Hinton 2015) + CE


@dataclasses.dataclass(frozen=True)
class Recovery(SlimConfig):
    """Short training after decomposition to win back accuracy (needs ``data=``)."""

    mode: RecoveryMode = RecoveryMode.NONE
    epochs: int = 1
    lr: float = 1e-3
    max_batches: int | None = None
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the distillation term; 1 - alpha on cross-entropy
    seed: int = 0
    # Re-measure BatchNorm running statistics on data.calib at the end (when data is given);
    # see bn_recalibration.py for why stale statistics break a decomposed model in eval mode.
    recalibrate_bn: bool = True

    def validate(self) -> None:
        object.__setattr__(self, "mode", parse_enum(RecoveryMode, self.mode, "recovery mode"))
        check_int("recovery epochs", self.epochs, 0, 1000)
        check_range("recovery lr", self.lr, 0.0, 10.0, low_open=True)
        if self.max_batches is not None:
            check_int("recovery max_batches", self.max_batches, 1, 10**9)
        check_range("temperature", self.temperature, 0.0, 100.0, low_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0)


def recover_(model: nn.Module, teacher: nn.Module | None, data: Any, rec: Recovery) -> nn.Module:
    """Fine-tune ``model`` in place (cross-entropy or distillation from ``teacher``)."""
    from slimkit.training import TrainConfig, train

    if rec.mode is RecoveryMode.NONE or rec.epochs == 0:
        return model
    if data is None:
        raise ConfigError(
            f"recovery mode {rec.mode.value!r} trains the model, so it needs data=...; pass a "
            "DataBundle (slimkit.load_dataset) or set recovery mode to 'none'"
        )
    cfg = TrainConfig(epochs=rec.epochs, lr=rec.lr, max_batches=rec.max_batches, seed=rec.seed)
    loss_fn = None
    if rec.mode is RecoveryMode.DISTILL:
        if teacher is None:
            raise ConfigError("distillation recovery needs the undecomposed model as teacher")
        teacher = teacher.eval()
        t = rec.temperature

        def loss_fn(_m: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor):
            with torch.no_grad():
                soft = F.softmax(teacher(x) / t, dim=1)  # (B, classes)
            kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * t * t
            return rec.alpha * kd + (1 - rec.alpha) * F.cross_entropy(logits, y)

    return train(model, data, cfg, loss_fn=loss_fn, description=f"recover ({rec.mode.value})")


_RANK_KEYS = {r.value for r in RankRule}


@dataclasses.dataclass(frozen=True)
class LowRankConfig(SlimConfig):
    """Fields every decomposition shares. ``skip_if_larger`` keeps a layer whose factors would
    hold as many parameters as the original (a factorisation must shrink it to be applied)."""

    rank: RankSpec = RankSpec()
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    skip_if_larger: bool = True
    recovery: Recovery = Recovery()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", RankSpec.parse(self.rank))
        if isinstance(self.recovery, dict):
            object.__setattr__(self, "recovery", Recovery.from_dict(self.recovery))
        for field in ("targets", "ignore"):
            if isinstance(getattr(self, field), str):  # a single pattern given as a string
                object.__setattr__(self, field, (getattr(self, field),))
        super().__post_init__()

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Also accept one rank shorthand key: ``ratio``/``energy``/``budget``/``vbmf``/``rank``."""
        data = dict(data)
        short = [k for k in data if k in _RANK_KEYS - {"rank"}]
        if short:
            if len(short) > 1 or "rank" in data:
                raise ConfigError(
                    f"give exactly one rank rule, but got {sorted(short + (['rank'] if 'rank' in data else []))}"
                )
            data["rank"] = {short[0]: data.pop(short[0])}
        return super().from_dict(data)


@dataclasses.dataclass
class LayerPlan:
    """What happened to one layer; stored by name in ``model.slimkit_decomposition``."""

    layer: str
    method: str
    shape: list[int]
    rank: list[int] | int | None
    params_before: int
    params_after: int
    applied: bool
    reason: str = ""
    rel_error: float | None = None  # ||W - W_r||_F / ||W||_F of the weights


Factorise = Callable[[str, nn.Module], tuple[nn.Module | None, LayerPlan]]


def replace_layers(
    model: nn.Module,
    cfg: Any,  # any config with targets, ignore, skip_if_larger
    types: tuple[type[nn.Module], ...],
    factorise: Factorise,
    *,
    eligible: Callable[[nn.Module], str | None] = lambda m: None,
) -> list[LayerPlan]:
    """Factorise every chosen layer; ``eligible(m)`` returns a reason to skip, or None.

    ``factorise(name, module)`` returns the replacement (or None) and its plan row; the
    replacement is kept only if it has fewer parameters, unless ``skip_if_larger`` is False.
    """
    chosen = select_modules(model, cfg.targets, cfg.ignore, types)
    plans: list[LayerPlan] = []
    # Each layer is replaced as soon as it is factorised (a data-driven fit of a later layer
    # sees the earlier factors' outputs), and all are put back when a later one fails (say a
    # fixed rank above its full rank): that used to leave a half-decomposed, unrecorded model.
    replaced: list[tuple[str, nn.Module]] = []
    try:
        _replace_each(model, cfg, chosen, factorise, eligible, plans, replaced)
    except BaseException:
        for name, module in reversed(replaced):
            set_module(model, name, module)
        raise
    record(model, plans)
    return plans


def _replace_each(
    model: nn.Module,
    cfg: Any,
    chosen: dict[str, nn.Module],
    factorise: Factorise,
    eligible: Callable[[nn.Module], str | None],
    plans: list[LayerPlan],
    replaced: list[tuple[str, nn.Module]],
) -> None:
    """replace_layers' loop: appends a plan row per layer and (name, original) per swap."""
    for name, module in chosen.items():
        w = getattr(module, "weight", None)
        if w is not None and not torch.isfinite(w).all():
            raise NumericsError(f"layer {name!r} has NaN/inf weights; it cannot be factorised")
        before = sum(p.numel() for p in module.parameters())
        reason = eligible(module)
        if reason is not None:
            plans.append(
                LayerPlan(
                    name,
                    "",
                    list(w.shape) if w is not None else [],
                    None,
                    before,
                    before,
                    False,
                    reason,
                )
            )
            continue
        with torch.no_grad():
            new, plan = factorise(name, module)
        if cfg.skip_if_larger and plan.params_after >= before:
            plan.reason = plan.reason or (
                f"factors would hold {plan.params_after:,} params >= {before:,} of the layer"
            )
            plan.applied, plan.params_after, new = False, before, None
        if new is None:
            plan.params_after = before
        else:
            new.train(module.training)
            set_module(model, name, new)
            replaced.append((name, module))
            plan.applied = True
        plans.append(plan)


def record(model: nn.Module, plans: list[LayerPlan]) -> None:
    """Merge plan rows into the model's JSON attribute, keyed by layer name."""
    current = dict(getattr(model, PLAN_ATTR, {}) or {})
    for p in plans:
        current[p.layer] = dataclasses.asdict(p)
    setattr(model, PLAN_ATTR, current)


def decomposition_plan(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The per-layer record of every decomposition applied to ``model`` (layer name -> row)."""
    return copy.deepcopy(dict(getattr(model, PLAN_ATTR, {}) or {}))


def run(model: nn.Module, cfg: Any, data: Any, apply: Callable[[nn.Module], object]):
    """Apply a technique, then its recovery (teacher = the model before it was changed), then
    re-measure BatchNorm statistics on ``data.calib`` when data is given."""
    teacher = copy.deepcopy(model).eval() if cfg.recovery.mode is RecoveryMode.DISTILL else None
    if cfg.recovery.mode is not RecoveryMode.NONE and data is None:
        recover_(model, teacher, None, cfg.recovery)  # raises the "needs data" error up front
    apply(model)
    recover_(model, teacher, data, cfg.recovery)
    calib = getattr(data, "calib", None)
    if cfg.recovery.recalibrate_bn and calib is not None:
        recalibrate_batchnorm(model, calib)
    return model
