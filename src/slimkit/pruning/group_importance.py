"""Group magnitude importance: score a channel by every parameter coupled to it, not its filter.

Removing channel c of a dependency group removes much more than the root conv's filter W[c]: the
BatchNorm's gamma[c], a depthwise conv's filter (not scored: 9 weights per channel, as in
Torch-Pruning), every consumer's input slice W_next[:, c] and, with
residual adds, the filters of every conv tied to the same sum. The filter alone is a poor signal
(after training without weight decay the filter norms of one layer are nearly flat), so this
scores c by the magnitude of everything the group deletes with it, as Torch-Pruning's
``GroupMagnitudeImportance`` (p, group_reduction="mean") does:

    score[c] = mean over coupled tensors t of  sum_{j in slice_t(c)} |t_j|^p

The group structure (which layers, which indices, their map to the root's channels) is the
Torch-Pruning ``Group`` the engine already traced; this module only reads weights from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _out_slices(layer: nn.Module, idxs: list[int], p: int) -> torch.Tensor | None:
    """sum |w|^p over the parameters of output channels ``idxs`` of one layer: (len(idxs),)."""
    if isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels:
        return None  # depthwise filters are skipped, as in Torch-Pruning's group importance
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        w = layer.weight.detach().float()[idxs].flatten(1)  # (k, in/groups * kh * kw)
        return w.abs().pow(p).sum(1)
    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
        return layer.weight.detach().float()[idxs].abs().pow(p)  # gamma: (k,)
    if isinstance(layer, nn.LayerNorm) and layer.elementwise_affine:
        return layer.weight.detach().float()[idxs].abs().pow(p)
    return None


def _in_slices(layer: nn.Module, idxs: list[int], p: int) -> torch.Tensor | None:
    """sum |w|^p over the weights reading input channels ``idxs`` of a consumer: (len(idxs),)."""
    if isinstance(layer, nn.Linear):
        # (out, in) -> (in, out); a Linear after a flatten has in = C*h*w, and ``idxs`` are
        # already expanded to those features (several map to one root channel)
        return layer.weight.detach().float().t()[idxs].abs().pow(p).sum(1)
    if isinstance(layer, nn.Conv2d):
        if layer.groups > 1 and layer.groups == layer.in_channels:
            return None  # depthwise: its filters are not scored (see _out_slices)
        w = layer.weight.detach().float().transpose(0, 1).flatten(1)  # (in/groups, out*kh*kw)
        imp = w.abs().pow(p).sum(1)
        if layer.groups > 1:  # grouped conv: every group reads its own in/groups slice
            imp = imp.repeat(layer.groups)
        return imp[idxs]
    return None


@torch.no_grad()
def coupled_magnitude(dg: Any, group: Any, channels: int, p: int) -> torch.Tensor | None:
    """Per-root-channel group magnitude of a Torch-Pruning ``group``: (channels,) or None.

    ``dg`` is the DependencyGraph that built the group (it tells output- from input-channel
    pruning functions). Items whose indices do not all map to a root channel are skipped, as in
    Torch-Pruning. ``p=1`` gives the group L1 sum; ``p=2`` the group L2 norm (square root of the
    mean of squares, so one ranking works for both).
    """
    total = torch.zeros(channels)
    terms = 0
    for item in group:
        dep, idxs, root_idxs = item.dep, list(item.idxs), list(item.root_idxs)
        if not idxs or any(r is None for r in root_idxs):
            continue
        layer = dep.target.module
        if dg.is_out_channel_pruning_fn(dep.handler):
            imp = _out_slices(layer, idxs, p)
        elif dg.is_in_channel_pruning_fn(dep.handler):
            imp = _in_slices(layer, idxs, p)
        else:
            imp = None
        if imp is None:
            continue
        total.scatter_add_(0, torch.tensor(root_idxs, dtype=torch.long), imp)
        terms += 1
    if terms == 0:
        return None
    mean = total / terms
    return mean.sqrt() if p == 2 else mean
