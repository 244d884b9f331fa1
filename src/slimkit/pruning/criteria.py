"""Channel importance criteria for structural pruning: per-layer scores, then per-group scores.

A criterion first scores every output channel of every layer by name (``layer_scores``), then
``group_scores`` combines the layers coupled in one Torch-Pruning dependency group (a conv, its
BatchNorm, a depthwise conv, every layer tied by a residual add) into one score per channel of
the group's root layer: the mean over the coupled layers of the preferred kind.

| criterion    | per-layer score of output channel c                       | layers used   |
|--------------|-----------------------------------------------------------|---------------|
| l1 / l2      | ||W[c]||_1 / ||W[c]||_2 of the conv filter or Linear row  | conv, linear  |
| bn_scale     | |gamma[c]| (network slimming)                             | batchnorm     |
| activation   | mean |a[c]| at the layer's activation site               | bn, else conv |
| apoz         | 1 - APoZ[c] (fraction of non-zeros after the activation)  | bn, else conv |
| taylor       | mean_n |mean_hw(a * dL/da)| at the activation site        | bn, else conv |

Higher score = more important; the lowest-scoring channels are removed.

With ``ChannelPruning(scope="group")`` (the default) l1 / l2 do not use this table: they score a
channel by every tensor its removal deletes (:mod:`slimkit.pruning.group_importance`).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError


class Criterion(enum.StrEnum):
    L1 = "l1"
    L2 = "l2"
    TAYLOR = "taylor"
    ACTIVATION = "activation"
    APOZ = "apoz"
    BN_SCALE = "bn_scale"


# Criteria computed from data (activation statistics or gradients).
NEEDS_DATA = frozenset({Criterion.TAYLOR, Criterion.ACTIVATION, Criterion.APOZ})
# Criteria whose raw values are comparable across layers; the others are divided by their group's
# mean before a global ranking (a conv with 9x more weights has ~9x larger filter norms).
SCALE_FREE = frozenset({Criterion.APOZ, Criterion.BN_SCALE})

WEIGHT = "weight"  # a Conv2d or Linear whose output channels are pruned
NORM = "norm"  # a BatchNorm / LayerNorm whose features are pruned


@dataclasses.dataclass(frozen=True)
class Member:
    """One layer whose output channels a group removes: ``idxs`` of the layer map to ``root_idxs``."""

    name: str
    kind: str  # WEIGHT or NORM
    idxs: tuple[int, ...]
    root_idxs: tuple[int | None, ...]


def layer_kind(m: nn.Module) -> str | None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return WEIGHT
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
        return NORM
    return None


def priority(criterion: Criterion) -> tuple[str, ...]:
    """Which member kinds a criterion reads, in order of preference."""
    if criterion in (Criterion.L1, Criterion.L2):
        return (WEIGHT,)
    if criterion is Criterion.BN_SCALE:
        return (NORM,)
    return (NORM, WEIGHT)


@torch.no_grad()
def weight_scores(model: nn.Module, p: int) -> dict[str, torch.Tensor]:
    """||W[c]||_p per output channel of every Conv2d/Linear: (out, in/groups, kh, kw) -> (out,)."""
    out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().float().flatten(1)  # (out, in*kh*kw)
            out[name] = w.abs().sum(1) if p == 1 else w.pow(2).sum(1).sqrt()
    return out


@torch.no_grad()
def bn_scale_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """|gamma| per channel of every affine BatchNorm: (C,)."""
    return {
        name: m.weight.detach().float().abs()
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    }


def layer_scores(
    model: nn.Module,
    criterion: Criterion,
    *,
    example: torch.Tensor | None = None,
    loader: Any = None,
    max_batches: int = 4,
) -> dict[str, torch.Tensor]:
    """Score every output channel of every Conv2d/Linear/BatchNorm, keyed by layer name."""
    if criterion is Criterion.L1:
        return weight_scores(model, 1)
    if criterion is Criterion.L2:
        return weight_scores(model, 2)
    if criterion is Criterion.BN_SCALE:
        return bn_scale_scores(model)
    from slimkit.pruning.activation import activation_sites, collect_stats

    if loader is None or example is None:
        raise ConfigError(
            f"criterion {criterion.value!r} measures activations, so it needs data: pass "
            "data=<DataBundle or DataLoader of (x, y) batches> to prune_"
        )
    modules = dict(model.named_modules())
    layers = [n for n, m in modules.items() if layer_kind(m) is not None]
    sites = activation_sites(model, example, layers)
    stats = collect_stats(
        model, loader, sites, max_batches=max_batches, taylor=criterion is Criterion.TAYLOR
    )
    scores: dict[str, torch.Tensor] = {}
    for layer, s in stats.items():
        if criterion is Criterion.ACTIVATION:
            score = s.mean_abs
        elif criterion is Criterion.APOZ:
            score = 1.0 - s.apoz
        elif s.taylor is not None:
            score = s.taylor
        else:
            continue
        expected = channel_count(modules[layer])
        if score.numel() != expected:
            raise ConfigError(
                f"criterion {criterion.value!r} measured {score.numel()} channels at the activation "
                f"site {sites[layer]!r} of layer {layer!r}, but the layer has {expected} output "
                "channels; its features must sit at dim 1 (Conv2d/BatchNorm) or last "
                f"(Linear/LayerNorm). Use criterion='l1' or ignore=[{layer!r}]"
            )
        scores[layer] = score
    return scores


def channel_count(m: nn.Module) -> int:
    """Number of output channels (features) a Conv2d/Linear/BatchNorm/LayerNorm has."""
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    return int(m.num_features)  # type: ignore[arg-type]


def group_scores(
    members: list[Member], channels: int, scores: dict[str, torch.Tensor], kinds: tuple[str, ...]
) -> torch.Tensor | None:
    """Mean score per root channel over the members of the first kind in ``kinds`` that has scores.

    Returns a (channels,) tensor, or None when no member of any listed kind has a score.
    """
    for kind in kinds:
        total = torch.zeros(channels)
        hits = torch.zeros(channels)
        for mem in members:
            if mem.kind != kind or mem.name not in scores:
                continue
            s = scores[mem.name]
            if mem.idxs and max(mem.idxs) >= s.numel():
                raise ConfigError(
                    f"the channel score of layer {mem.name!r} has {s.numel()} entries, but the "
                    f"pruning group indexes its channel {max(mem.idxs)}; a score needs one entry "
                    "per output channel of the layer"
                )
            for i, r in zip(mem.idxs, mem.root_idxs):
                if r is None:
                    continue
                total[r] += float(s[i])
                hits[r] += 1
        if hits.sum() > 0:
            # Channels no member of this kind covers take the group's mean (neutral rank).
            mean = total[hits > 0] / hits[hits > 0]
            out = torch.full((channels,), float(mean.mean()))
            out[hits > 0] = mean
            return out
    return None
