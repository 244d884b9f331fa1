"""``distill(student, teacher, data, DistillConfig(...))``: train a student against a teacher.

Built on :func:`slimkit.training.train`: the student's own forward gives its logits and (through
forward hooks on the named layers) its features; :class:`DistillLoss` runs the teacher without
gradients on the same batch and combines the configured terms::

    loss = [LogitKD: alpha*T^2*KL + (1-alpha)*CE  |  no LogitKD: CE]
           + sum over feature losses of  weight * sum_pairs pair.weight * term(adapter(s), t)

The adapters (1x1 conv / linear, only where shapes differ) live in ``DistillLoss.adapters`` and
are optimized with the student (``train(..., extra_params=...)``). Hooks are removed in a
``finally`` so a failing run leaves the models as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import SlimConfig, parse_enum
from slimkit.data.datasets import DataBundle
from slimkit.distillation.augment import RandomAffine, augment_bundle
from slimkit.distillation.hooks import FeatureHooks
from slimkit.distillation.losses import (
    LOSS_TYPES,
    KDKind,
    LogitKD,
    LossConfig,
    _FeatureKD,
    logit_kd_loss,
    make_adapter,
)
from slimkit.distillation.teachers import CachedTeacher, Teacher, as_teacher
from slimkit.errors import ConfigError
from slimkit.registry import Registry
from slimkit.training import TrainConfig, train_loop

DISTILLERS = Registry("distillation")


@dataclasses.dataclass(frozen=True)
class DistillConfig(SlimConfig):
    """Which losses to combine, how to train (epochs, optimizer, seed...) and an optional
    input augmentation: with ``augment`` every training batch is warped (seeded by
    ``train.seed``) and the teacher gives its soft targets on the same warped batch."""

    losses: tuple[LossConfig, ...] = (LogitKD(),)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    augment: RandomAffine | None = None

    def validate(self) -> None:
        if not isinstance(self.losses, tuple) or not self.losses:
            raise ConfigError(
                f"losses must name at least one distillation loss, but got {self.losses!r}"
            )
        valid = tuple(LOSS_TYPES.values())
        for loss in self.losses:
            if not isinstance(loss, valid):
                raise ConfigError(
                    f"losses entries must be one of {[t.__name__ for t in valid]}, "
                    f"but got {type(loss).__name__}"
                )
        n_logit = sum(isinstance(loss, LogitKD) for loss in self.losses)
        if n_logit > 1:
            raise ConfigError(f"at most one LogitKD may be given, but got {n_logit}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, but got {type(self.train).__name__}")
        if self.augment is not None and not isinstance(self.augment, RandomAffine):
            raise ConfigError(
                f"augment must be a RandomAffine or None, but got {type(self.augment).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses": [{"kind": loss.kind, **loss.to_dict()} for loss in self.losses],
            "train": self.train.to_dict(),
            "augment": None if self.augment is None else self.augment.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Parse ``{"losses": [{"kind": "logit", "temperature": 4}, ...], "train": {...},
        "augment": {"max_shift": 2, "max_rotate": 10}}`` (augment optional)."""
        unknown = sorted(set(data) - {"augment", "losses", "train"})
        if unknown:
            raise ConfigError(
                f"DistillConfig got unknown option(s) {unknown}; valid options are "
                "['augment', 'losses', 'train']"
            )
        losses = []
        items = data.get("losses", [{"kind": "logit"}])
        if not isinstance(items, (list, tuple)):  # `losses:` left empty: was "not iterable"
            raise ConfigError(
                f"losses must be a list such as [{{kind: logit}}, {{kind: hint, pairs: "
                f"[fc1=fc1]}}], but got {items!r}"
            )
        for item in items:
            if not isinstance(item, dict) or "kind" not in item:
                raise ConfigError(
                    f"each loss must be a mapping with a 'kind' key, but got {item!r}"
                )
            options = dict(item)
            kind = parse_enum(KDKind, options.pop("kind"), "loss kind")
            losses.append(LOSS_TYPES[kind].from_dict(options))
        train_cfg = TrainConfig.from_dict(dict(data.get("train", {})))
        augment = data.get("augment")
        if augment is not None:
            if not isinstance(augment, dict):
                raise ConfigError(f"augment must be a mapping or null, but got {augment!r}")
            augment = RandomAffine.from_dict(dict(augment))
        return cls(losses=tuple(losses), train=train_cfg, augment=augment)


def _feature_losses(losses: Sequence[LossConfig]) -> list[tuple[int, _FeatureKD]]:
    return [(i, loss) for i, loss in enumerate(losses) if isinstance(loss, _FeatureKD)]


class DistillLoss(nn.Module):
    """The ``loss_fn(model, x, y, student_logits)`` for :func:`slimkit.training.train`.

    Owns the adapters (``self.adapters``) and the forward hooks on student and teacher.
    Lifecycle: ``with loss.attached(example_x): train(...)`` - attach hooks, probe shapes and
    build adapters once, remove hooks on exit (also on error).
    """

    def __init__(self, student: nn.Module, teacher: Any, losses: Sequence[LossConfig]) -> None:
        super().__init__()
        self.configs = tuple(losses)
        self.teacher: Teacher = as_teacher(teacher)
        feats = _feature_losses(self.configs)
        if feats and not self.teacher.supports_features:
            raise ConfigError(
                f"{type(feats[0][1]).__name__} reads teacher layers, but the teacher is "
                f"{type(self.teacher).__name__} (opaque); use LogitKD with an ONNX teacher, or "
                "pass the teacher as a PyTorch model"
            )
        self.logit = next((c for c in self.configs if isinstance(c, LogitKD)), None)
        s_names = [p.student for _, c in feats for p in c.pairs]
        self.teacher_layers = list(dict.fromkeys(p.teacher for _, c in feats for p in c.pairs))
        # Both resolve names now: a wrong name is a TargetError with near matches.
        self.student_hooks = FeatureHooks(student, s_names)
        if self.teacher.module is not None and self.teacher_layers:
            FeatureHooks(self.teacher.module, self.teacher_layers)  # validates names only
        self.adapters = nn.ModuleDict()  # "<loss index>_<pair index>" -> Conv2d / Linear
        self._built = False
        self.last: dict[str, float] = {}  # the terms of the last batch, for logging

    @staticmethod
    def _key(i: int, j: int) -> str:
        return f"{i}_{j}"

    @contextmanager
    def attached(self, example_x: torch.Tensor | None = None) -> Iterator[DistillLoss]:
        """Attach hooks (and build adapters from ``example_x``); always remove them on exit."""
        try:
            self.student_hooks.attach()
            self.teacher.watch(self.teacher_layers)
            if example_x is not None:
                self.build(example_x)
            yield self
        finally:
            self.student_hooks.remove()
            self.teacher.unwatch()

    @torch.no_grad()
    def build(self, example_x: torch.Tensor, seed: int = 0) -> None:
        """Probe feature shapes on ``example_x`` (B >= 1) and create the adapters needed."""
        feats = _feature_losses(self.configs)
        if self._built or not feats:
            self._built = True
            return
        student = self.student_hooks.model
        was_training = student.training
        student.eval()  # no BatchNorm statistics updates from the probe
        try:
            student(example_x)
            _, t_feats = self.teacher.run(example_x)
        finally:
            student.train(was_training)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # adapters start the same for a given seed
        try:
            for i, cfg in feats:
                for j, pair in enumerate(cfg.pairs):
                    s = tuple(self.student_hooks.get(pair.student).shape[1:])
                    t = tuple(t_feats[pair.teacher].shape[1:])
                    where = f"{type(cfg).__name__} pair student {pair.student!r} / teacher {pair.teacher!r}"
                    if cfg.kind == KDKind.ATTENTION.value:
                        if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                            raise ConfigError(
                                f"{where}: attention maps need (C, H, W) features of equal spatial "
                                f"size, but the student gives {s} and the teacher {t}; pair layers "
                                "with the same H x W"
                            )
                        continue
                    adapter = make_adapter(s, t, allow=getattr(cfg, "adapter", True), where=where)
                    if adapter is not None:
                        self.adapters[self._key(i, j)] = adapter.to(example_x.device)
        finally:
            torch.random.set_rng_state(gen_state)
            self.student_hooks.clear()
        self._built = True

    def forward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        # ``model(x)`` already ran (hooks captured the student's features); run the teacher now.
        if not self._built:
            raise ConfigError(
                "DistillLoss.build(example_x) must run before the first loss (use attached())"
            )
        t_logits, t_feats = self.teacher.run(x)  # (B, classes), {layer: feature}; no grad
        self.last = {}
        if self.logit is not None:
            loss = logit_kd_loss(logits, t_logits, y, self.logit.temperature, self.logit.alpha)
            self.last["logit"] = float(loss.detach())
        else:
            loss = F.cross_entropy(logits.float(), y)
            self.last["ce"] = float(loss.detach())
        for i, cfg in _feature_losses(self.configs):
            term = logits.new_zeros((), dtype=torch.float32)
            for j, pair in enumerate(cfg.pairs):
                s = self.student_hooks.get(pair.student)
                t = t_feats[pair.teacher].detach()
                key = self._key(i, j)
                if key in self.adapters:
                    s = self.adapters[key](s)
                term = term + pair.weight * cfg.pair_loss(s, t)
            self.last[f"{cfg.kind}_{i}"] = float(term.detach())
            loss = loss + cfg.weight * term
        self.student_hooks.clear()
        return loss


def distill(
    student: nn.Module,
    teacher: Any,
    data: DataBundle,
    config: DistillConfig | None = None,
    *,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train ``student`` in place against ``teacher`` on ``data.train``; returns it in eval mode.

    ``teacher``: an nn.Module (zoo, pruned or quantized slimkit model), a slimkit model file,
    an ``.onnx`` file/bytes or an ORT InferenceSession (logit KD only). A pruned student stays
    pruned: weights that are zero in its pruned layers (``pruning.keep_zeros``) are put back
    to zero after every step, before ``after_step``. A quantized student is refused: training
    would move its weights off their grid (distill first, then quantize).
    """
    config = config or DistillConfig()
    if config.augment is not None and isinstance(teacher, CachedTeacher):
        raise ConfigError(
            "a CachedTeacher memoises outputs per input, but augment warps every batch anew, so "
            "nothing would be reused; pass the teacher itself when augment is set"
        )
    from slimkit.preconditions import check_fits, check_model, refuse_quantized
    from slimkit.pruning.keep_zeros import chain, zero_keeper

    check_model(student, "distill (student)")
    refuse_quantized(
        student,
        "distill (student)",
        "distill the float model and quantize after, or use quantize's finetune_centroids",
    )
    if teacher is student:
        raise ConfigError(
            "distill: the teacher is the student itself, so there is nothing to learn; pass a "
            "trained model (or copy.deepcopy(student) to distill from its current state)"
        )
    loss = DistillLoss(student, teacher, config.losses)  # checks the layer pairs first
    after_step = chain(zero_keeper(student), after_step)  # was: a pruned student came back dense
    device = torch.device(config.train.device)
    try:
        # The one probe of this run, on the CPU where the data's inputs are, before the models
        # move to ``device`` and adapters are built: train_loop does not probe again.
        check_fits(student, data, "distill (student)")
        check_teacher(loss.teacher, student, data)
        student.to(device)
        if loss.teacher.module is not None:
            loss.teacher.module.to(device)
        example = data.example_input(2).to(device)
        data = augment_bundle(data, config.augment, seed=config.train.seed)
        with loss.attached():
            loss.build(example, seed=config.train.seed)
            loss.adapters.to(device)
            train_loop(
                student,
                data,
                config.train,
                loss_fn=loss,
                after_step=after_step,
                on_epoch_end=on_epoch_end,
                description="distill",
                extra_params=list(loss.adapters.parameters()),
            )
    finally:
        loss.teacher.close()
    return student


def check_teacher(teacher: Any, student: nn.Module, data: DataBundle) -> None:
    """The teacher takes the data's inputs, gives finite logits, one per student output."""
    x = data.example_input(2)
    try:
        t_out = teacher(x)
    except Exception as exc:  # noqa: BLE001 - torch's and ONNX Runtime's own (Exception) kinds
        if not isinstance(exc, (RuntimeError, ValueError, IndexError)) and not type(
            exc
        ).__module__.startswith("onnxruntime"):
            raise
        raise ConfigError(
            f"distill: the teacher does not take the data's inputs of shape {tuple(x.shape)} "
            f"({str(exc).splitlines()[0]}); pass a teacher trained on this dataset"
        ) from None
    was_training = student.training
    with torch.no_grad():
        s_out = student.eval()(x)
    student.train(was_training)
    if tuple(t_out.shape) != tuple(s_out.shape):
        raise ConfigError(
            f"distill: the teacher gives outputs of shape {tuple(t_out.shape)} but the student "
            f"{tuple(s_out.shape)}; logit distillation needs the same classes on both sides"
        )
    if not torch.isfinite(t_out).all():
        from slimkit.errors import NumericsError

        raise NumericsError(
            "distill: the teacher's outputs hold NaN or inf, so the student would learn NaN; "
            "check the teacher's weights (slimkit.load refuses NaN files) and the data"
        )


@DISTILLERS.register(DistillConfig)
def _distill_handler(
    student: nn.Module, config: DistillConfig, *, teacher: Any, data: DataBundle, **kwargs: Any
) -> nn.Module:
    return distill(student, teacher, data, config, **kwargs)


def distill_(
    student: nn.Module, config: DistillConfig, *, teacher: Any, data: DataBundle, **kwargs: Any
) -> nn.Module:
    """Registry-style entry, like ``prune_``/``quantize_``: ``distill_(student, cfg, teacher=t, data=d)``."""
    return DISTILLERS.lookup(config)(student, config, teacher=teacher, data=data, **kwargs)


@torch.no_grad()
def agreement(student: nn.Module, teacher: Any, loader) -> float:
    """Fraction of samples where student and teacher pick the same class (top-1)."""
    t = as_teacher(teacher)
    student.eval()
    same = total = 0
    try:
        for x, _ in loader:
            same += int((student(x).argmax(1) == t(x).argmax(1)).sum())
            total += len(x)
    finally:
        t.close()
    if total == 0:
        raise ConfigError("cannot measure agreement on an empty loader (0 samples)")
    return same / total


__all__ = ["DISTILLERS", "DistillConfig", "DistillLoss", "agreement", "distill", "distill_"]
