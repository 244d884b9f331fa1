"""Structured channel/filter pruning with real removal, on Torch-Pruning's DependencyGraph.

``sk.prune_(model, ChannelPruning(ratio=0.5, criterion="l1"), data=bundle)`` removes half of the
output channels of every targeted channel group and rebuilds the layers: the result is a plain
module tree of Conv2d / Linear / BatchNorm with fewer channels that exports to ONNX and saves with
:mod:`slimkit.io` (the spec records the new shapes).

Engine (Torch-Pruning does the graph work, slimkit decides what to remove):

1. pre-flight: layers the engine cannot resize are named before anything changes;
2. trace the model once into a ``tp.DependencyGraph``; each *group* is a set of layers that must
   lose the same channels (conv -> BN -> depthwise conv -> next conv's inputs, every layer tied by a
   residual add, the slices of a ``torch.cat``);
3. a criterion (:mod:`slimkit.pruning.criteria`) scores each group's channels by layer name;
4. per group (or globally) the lowest-scoring channels are chosen, never leaving a group with
   fewer than ``min_channels`` (and never 0), and Torch-Pruning slices every coupled tensor.

The classifier's output (the layer producing the model output) is never pruned. ``ratio`` is a
"prune this fraction of the current channels now" step, so gradual schedules can call it
repeatedly.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.config import (
    SlimConfig,
    check_int,
    check_range,
    get_module,
    parse_enum,
    select_modules,
)
from slimkit.errors import ConfigError, NumericsError
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.criteria import (
    SCALE_FREE,
    WEIGHT,
    Criterion,
    Member,
    group_scores,
    layer_kind,
    layer_scores,
    priority,
)
from slimkit.pruning.group_importance import coupled_magnitude
from slimkit.pruning.preflight import preflight

PRUNABLE = (nn.Conv2d, nn.Linear)


class RoundMode(str, enum.Enum):
    """How a pruned group's kept channel count is rounded to a multiple of ``round_to``."""

    UP = "up"
    NEAREST = "nearest"


class ScoreScope(str, enum.Enum):
    """What an ``l1`` / ``l2`` channel score reads: the whole dependency group or the filter."""

    GROUP = "group"
    FILTER = "filter"


# Criteria whose score ``scope="group"`` widens to every coupled tensor (weight magnitudes).
GROUP_MAGNITUDE = {Criterion.L1: 1, Criterion.L2: 2}


@dataclasses.dataclass(frozen=True)
class ChannelPruning(SlimConfig):
    """Remove ``ratio`` of the output channels of the targeted layers (and everything coupled).

    ``global_=False`` removes ``floor(ratio * n)`` channels from each group of ``n``;
    ``global_=True`` ranks all targeted channels together (scores normalised per group unless the
    criterion is scale-free) and removes ``floor(ratio * total)``, at most ``max_layer_ratio`` of
    any group. Every group keeps at least ``min_channels`` (and at least 1); with ``round_to`` > 1
    a pruned group keeps a multiple of it (faster CPU kernels). ``round_mode="up"`` rounds the kept
    count up (never removes more than asked); ``"nearest"`` rounds it to the nearest multiple
    (16 channels at ratio 0.45 keep 8, not 12: ONNX Runtime pads 12 to 16 in its 8-wide blocked
    conv kernels, so 12 channels cost as much as 16).

    ``scope`` (``l1`` / ``l2`` only): ``"group"`` (default) scores channel c by the magnitude of
    every tensor its removal deletes (the conv filter, BatchNorm gamma, each consumer's input
    slice, every residual-tied conv), as Torch-Pruning's GroupMagnitudeImportance;
    ``"filter"`` by the root filters alone (the older behaviour). The data criteria (taylor,
    activation, apoz) and bn_scale ignore it.
    """

    kind = "structured"

    ratio: float = 0.5
    criterion: Criterion = Criterion.L1
    global_: bool = False
    min_channels: int = 1
    max_layer_ratio: float = 1.0
    round_to: int = 1
    round_mode: RoundMode = RoundMode.UP
    scope: ScoreScope = ScoreScope.GROUP
    calib_batches: int = 4
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        object.__setattr__(self, "round_mode", parse_enum(RoundMode, self.round_mode, "round_mode"))
        object.__setattr__(self, "criterion", parse_enum(Criterion, self.criterion, "criterion"))
        object.__setattr__(self, "scope", parse_enum(ScoreScope, self.scope, "scope"))
        check_range("ratio", self.ratio, 0.0, 1.0, high_open=True)
        check_range("max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, low_open=True)
        check_int("min_channels", self.min_channels, 1, 1_000_000)
        check_int("calib_batches", self.calib_batches, 1, 100_000)
        check_int("round_to", self.round_to, 1, 1024)


@dataclasses.dataclass
class ChannelGroup:
    """Layers that lose the same channels; indices are in the root layer's output space."""

    root: str
    channels: int
    members: list[Member]
    dependency: Any = None  # the Torch-Pruning Group (every coupled tensor and its indices)

    @property
    def layers(self) -> list[str]:
        return sorted({m.name for m in self.members})


@dataclasses.dataclass
class StructuredResult:
    """What one structural pruning step removed, keyed by root layer name."""

    removed: dict[str, list[int]]
    groups: dict[str, dict[str, Any]]  # root -> {"layers": [...], "before": n, "after": k}
    channels_before: int
    channels_after: int

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.channels_after / max(1, self.channels_before)


# ----------------------------------------------------------------------------- inputs


def resolve_inputs(
    model: nn.Module, data: Any = None, example_inputs: torch.Tensor | None = None
) -> tuple[torch.Tensor, Any]:
    """Return (example input for tracing, calibration loader or None) from what the user passed.

    ``data`` may be a DataBundle (its ``calib`` loader is used), a DataLoader / iterable of
    ``(x, y)`` batches, or a tensor. Without either, a zoo model's ``slimkit_arch`` gives the shape.
    """
    loader = None
    if data is not None:
        if isinstance(data, torch.Tensor):
            example_inputs = data if example_inputs is None else example_inputs
        else:
            loader = getattr(data, "calib", data)
    if example_inputs is None and loader is not None:
        batch = next(iter(loader))
        example_inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        example_inputs = example_inputs[:2]
    if example_inputs is None:
        arch = getattr(model, "slimkit_arch", None)
        if arch is None:
            raise ConfigError(
                "structural pruning traces the model, so it needs an input: pass data=<DataBundle "
                "or DataLoader> or example_inputs=<tensor of one batch>"
            )
        kw = arch.get("kwargs", {})
        size = int(kw.get("image_size", 28))
        example_inputs = torch.zeros(1, int(kw.get("in_channels", 1)), size, size)
    return example_inputs, loader


# ----------------------------------------------------------------------------- graph


@torch.no_grad()
def output_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """Name of the Conv2d/Linear whose output is the model output (else the last one executed).

    The probe runs in eval mode (restored after): in train mode it moved BatchNorm running
    statistics and counted a batch in ``num_batches_tracked``.
    """
    produced: list[tuple[str, torch.Tensor]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            hooks.append(m.register_forward_hook(lambda _m, _i, o, n=name: produced.append((n, o))))
    was_training = model.training
    try:
        out = model.eval()(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for name, o in produced:
        if o is out:
            return name
    return produced[-1][0] if produced else None


def build_graph(model: nn.Module, example: torch.Tensor, extra_supported: Iterable[type] = ()):
    """Pre-flight, then trace ``model`` into a Torch-Pruning DependencyGraph (eval mode)."""
    import torch_pruning as tp

    preflight(model, extra_supported)
    was_training = model.training
    model.eval()  # tracing runs a forward pass: do not touch BatchNorm running statistics
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)
    return dg


def channel_groups(model: nn.Module, dg: Any, protected: Iterable[str] = ()) -> list[ChannelGroup]:
    """Every prunable group of the graph (root = a Conv2d/Linear), minus groups touching
    ``protected`` layers (their output channels must not change)."""
    names = {m: n for n, m in model.named_modules()}
    protected_modules = [m for m, n in names.items() if n in set(protected)]
    groups: list[ChannelGroup] = []
    for group in dg.get_all_groups(ignored_layers=protected_modules, root_module_types=PRUNABLE):
        members: list[Member] = []
        root = None
        for item in group:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if not dg.is_out_channel_pruning_fn(dep.handler) or module not in names:
                continue
            kind = layer_kind(module)
            if kind is None:
                continue
            if root is None:
                root = names[module]
            members.append(Member(names[module], kind, tuple(idxs), tuple(item.root_idxs)))
        if root is None:
            continue
        groups.append(ChannelGroup(root, len(group[0].idxs), members, group))
    return groups


# ----------------------------------------------------------------------------- planning


def keep_minimum(channels: int, min_channels: int) -> int:
    return min(channels, max(1, min_channels))


def plan_removal(
    groups: list[ChannelGroup],
    scores: list[torch.Tensor],
    *,
    ratio: float,
    global_: bool,
    min_channels: int = 1,
    max_layer_ratio: float = 1.0,
    normalize: bool = True,
    round_to: int = 1,
    round_mode: RoundMode | str = RoundMode.UP,
) -> dict[str, list[int]]:
    """Choose the channels to remove: ``{root layer name: sorted root indices}``.

    With ``round_to > 1`` each pruned group keeps a multiple of ``round_to`` channels (the kept
    count rounded up, or to the nearest multiple within the group's cap): CPU conv kernels (ONNX
    Runtime's blocked NCHWc layout) run odd widths such as 11 or 22 slower than 16 or 24.
    """
    mode = RoundMode(round_mode)
    caps = [
        min(
            g.channels - keep_minimum(g.channels, min_channels),
            math.floor(max_layer_ratio * g.channels + 1e-9),
        )
        for g in groups
    ]
    plan: dict[str, list[int]] = {}
    if not global_:
        for g, s, cap in zip(groups, scores, caps):
            k = min(cap, math.floor(ratio * g.channels + 1e-9))
            k = _rounded(g.channels, k, round_to, mode, cap)
            if k > 0:
                # stable sort: ties keep the lowest index first, so plans are deterministic
                order = torch.argsort(s, stable=True)[:k]
                plan[g.root] = sorted(int(i) for i in order)
        return plan
    total = sum(g.channels for g in groups)
    budget = math.floor(ratio * total + 1e-9)
    entries: list[tuple[float, int, int]] = []
    for gi, s in enumerate(scores):
        norm = s / s.mean().clamp_min(1e-12) if normalize else s
        entries += [(float(v), gi, i) for i, v in enumerate(norm.tolist())]
    entries.sort()
    taken = [0] * len(groups)
    chosen: dict[int, list[int]] = {}
    for _, gi, i in entries:
        if budget <= 0:
            break
        if taken[gi] >= caps[gi]:
            continue
        taken[gi] += 1
        chosen.setdefault(gi, []).append(i)
        budget -= 1
    for gi, idxs in chosen.items():
        k = _rounded(groups[gi].channels, len(idxs), round_to, mode, caps[gi])
        if k > 0:
            # a group's global picks are its own lowest scores, so its k lowest are the picks
            # (rounding up drops the least certain ones, rounding down adds the next lowest)
            order = torch.argsort(scores[gi], stable=True)[:k]
            plan[groups[gi].root] = sorted(int(i) for i in order)
    return plan


def _rounded(
    channels: int, remove: int, round_to: int, mode: RoundMode = RoundMode.UP, cap: int = -1
) -> int:
    """Channels to remove so the kept count is a multiple of ``round_to``.

    ``mode=UP`` rounds the kept count up; ``NEAREST`` to the nearest multiple (ties up), unless
    that removes more than ``cap`` channels, then up.
    """
    if round_to <= 1 or remove <= 0:
        return remove
    kept = channels - remove
    keep = math.ceil(kept / round_to) * round_to
    if mode is RoundMode.NEAREST:
        down = math.floor(kept / round_to) * round_to
        if down > 0 and kept - down < keep - kept and (cap < 0 or channels - down <= cap):
            keep = down
    return max(0, channels - keep) if keep < channels else 0


def apply_plan(model: nn.Module, dg: Any, plan: dict[str, list[int]]) -> None:
    """Remove the planned channels of each group (Torch-Pruning slices every coupled tensor)."""
    for root, idxs in plan.items():
        module = get_module(model, root)
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, idxs)
        if not dg.check_pruning_group(group):
            raise NumericsError(
                f"removing {len(idxs)} channels of the group rooted at {root!r} would leave a "
                "coupled layer with 0 channels; lower ratio or raise min_channels"
            )
        group.prune()


# ----------------------------------------------------------------------------- driver


def prune_channels(
    model: nn.Module,
    *,
    ratio: float,
    criterion: Criterion | str = Criterion.L1,
    global_: bool = False,
    min_channels: int = 1,
    max_layer_ratio: float = 1.0,
    targets: Iterable[str] = (),
    ignore: Iterable[str] = (),
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
    calib_batches: int = 4,
    scores: dict[str, torch.Tensor] | None = None,
    score_kinds: tuple[str, ...] | None = None,
    normalize: bool | None = None,
    round_to: int = 1,
    round_mode: RoundMode | str = RoundMode.UP,
    scope: ScoreScope | str = ScoreScope.GROUP,
) -> StructuredResult:
    """Structural pruning step in place; see :class:`ChannelPruning` for the options.

    ``scores`` (layer name -> per-channel score) replaces the criterion, e.g. learned gate scores.
    """
    crit: Criterion = parse_enum(Criterion, criterion, "criterion")
    check_range("ratio", ratio, 0.0, 1.0, high_open=True)
    targets, ignore = tuple(targets), tuple(ignore)
    example, loader = resolve_inputs(model, data, example_inputs)
    selected = set(select_modules(model, targets, ignore, PRUNABLE))
    all_layers = {n for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    ignored = all_layers - set(select_modules(model, (), ignore, PRUNABLE))
    classifier = output_layer(model, example)
    protected = ignored | ({classifier} if classifier else set())
    dg = build_graph(model, example)

    groups = [
        g
        for g in channel_groups(model, dg, protected)
        if any(m.name in selected for m in g.members if m.kind == WEIGHT)
        and g.channels > keep_minimum(g.channels, min_channels)
    ]
    label = crit.value if scores is None else "custom"
    group_p = None
    if scores is None and parse_enum(ScoreScope, scope, "scope") is ScoreScope.GROUP:
        group_p = GROUP_MAGNITUDE.get(crit)
    if group_p is not None:
        scores = {}  # l1/l2 over the whole group: read from each group's tensors below
    elif scores is None:
        scores = layer_scores(
            model, crit, example=example, loader=loader, max_batches=calib_batches
        )
    kinds = score_kinds or priority(crit)
    group_vals: list[torch.Tensor] = []
    for g in groups:
        if group_p is not None:
            s = coupled_magnitude(dg, g.dependency, g.channels, group_p)
        else:
            s = group_scores(g.members, g.channels, scores, kinds)
        if s is None:
            raise ConfigError(
                f"criterion {crit.value!r} found nothing to score in the channel group rooted at "
                f"{g.root!r} (layers {g.layers}); bn_scale needs a BatchNorm after the layer. Use "
                f"criterion='l1' or ignore=[{g.root!r}]"
            )
        if not torch.isfinite(s).all():
            raise NumericsError(f"channel scores of the group rooted at {g.root!r} hold NaN/inf")
        group_vals.append(s)
    if normalize is None:
        normalize = crit not in SCALE_FREE
    plan = plan_removal(
        groups,
        group_vals,
        ratio=ratio,
        global_=global_,
        min_channels=min_channels,
        max_layer_ratio=max_layer_ratio,
        normalize=normalize,
        round_to=round_to,
        round_mode=round_mode,
    )
    apply_plan(model, dg, plan)

    info = {
        g.root: {
            "layers": g.layers,
            "before": g.channels,
            "after": g.channels - len(plan.get(g.root, [])),
        }
        for g in groups
    }
    before = sum(g.channels for g in groups)
    result = StructuredResult(plan, info, before, before - sum(len(v) for v in plan.values()))
    history = list(getattr(model, "slimkit_channel_history", []))
    history.append(
        {
            "criterion": label,
            "ratio": ratio,
            "global": global_,
            "removed": {r: len(v) for r, v in plan.items()},
        }
    )
    # a JSON attribute: models/spec.py saves it with the model
    model.slimkit_channel_history = history  # type: ignore[assignment]
    return result


@PRUNERS.register(ChannelPruning)
def _channel_pruning(
    model: nn.Module,
    config: ChannelPruning,
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
    **_: Any,
) -> nn.Module:
    prune_channels(
        model,
        ratio=config.ratio,
        criterion=config.criterion,
        global_=config.global_,
        min_channels=config.min_channels,
        max_layer_ratio=config.max_layer_ratio,
        round_to=config.round_to,
        round_mode=config.round_mode,
        scope=config.scope,
        targets=config.targets,
        ignore=config.ignore,
        data=data,
        example_inputs=example_inputs,
        calib_batches=config.calib_batches,
    )
    return model
