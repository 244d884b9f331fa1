"""Turn a byte budget into the auto-compress search space: layer groups, each group's sparsity
range, and a first trial that already sits just inside the budget.

Bytes are measured, not modelled: :func:`choice_bytes` writes the ``.slim`` artifact of a choice
compressed without training (one-shot masks, k-means, no fine-tune), which costs about a second.
The trained artifact has the same masks and bits; only the entropy coding of the codes moves
(on LeNet-300-100 it came out 4-6 % larger). From it:

- the first trial: the per-group sparsities one global magnitude threshold gives (as the Deep
  Compression recipe prunes) at the bit width nearest 4, the global sparsity found by bisection
  so the artifact fills ``fill`` (e.g. 90 %) of the budget;
- each group's lowest sparsity: below it, the group alone at the smallest bit width would
  outgrow the whole budget, so trials there are wasted (bytes per kept weight measured at the
  first trial's sparsities with the smallest bit width).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimkit.pruning.masks import weight_of

if TYPE_CHECKING:
    from slimkit.search.autocompress import AutoCompressConfig

REST = "rest"  # the group holding every layer that is not big enough to get its own
GRID = 0.005  # sparsity step of the search space


def layer_groups(layers: dict[str, nn.Module], max_groups: int) -> dict[str, list[str]]:
    """Group name -> layer names. The ``max_groups - 1`` largest layers (by weight count) each get
    their own group and the rest share one, so the search has few knobs where few matter (in
    LeNet-300-100 the first layer holds 88 % of the weights)."""
    if len(layers) <= max_groups:
        return {n: [n] for n in layers}
    size = {n: weight_of(m).numel() for n, m in layers.items()}
    own = set(sorted(layers, key=lambda n: -size[n])[: max_groups - 1])
    groups = {n: [n] for n in layers if n in own}
    groups[REST] = [n for n in layers if n not in own]
    return groups


def choice_bytes(model: nn.Module, groups: dict[str, list[str]], choice: dict[str, Any]) -> int:
    """Bytes of the ``.slim`` artifact of ``choice`` compressed without any training."""
    from slimkit.export import slimformat
    from slimkit.search.compress_trial import compress_trial

    compressed, _ = compress_trial(model, None, groups, choice, None, train=False)
    with tempfile.TemporaryDirectory() as tmp:
        return slimformat.save(compressed, Path(tmp) / "model.slim")


def global_choice(
    layers: dict[str, nn.Module], groups: dict[str, list[str]], sparsity: float, bits: int
) -> dict[str, Any]:
    """Per-group sparsities that global magnitude pruning at ``sparsity`` would give (one |w|
    threshold over every layer, as the Deep Compression recipe prunes), floored to the grid."""
    mags = {n: weight_of(m).detach().abs().flatten() for n, m in layers.items()}
    every = torch.cat(list(mags.values()))  # (total weights,)
    k = int(round(sparsity * every.numel()))
    threshold = every.kthvalue(k).values if k > 0 else every.min() - 1
    out: dict[str, Any] = {}
    for g, names in groups.items():
        w = torch.cat([mags[n] for n in names])
        out[f"sparsity_{g}"] = _floor(float((w <= threshold).float().mean()))
        out[f"bits_{g}"] = bits
    return out


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    groups: dict[str, list[str]]
    start: dict[str, Any]  # the first trial's choice
    start_bytes: int  # its artifact compressed without training
    low: dict[str, float]  # group -> lowest sparsity worth trying
    high: float  # highest sparsity (cfg.max_sparsity on the grid)


def _floor(x: float) -> float:
    return round(math.floor(x / GRID + 1e-9) * GRID, 6)


def plan_budget(
    model: nn.Module, layers: dict[str, nn.Module], cfg: AutoCompressConfig
) -> BudgetPlan:
    groups = layer_groups(layers, cfg.max_groups)
    high = _floor(cfg.max_sparsity)
    bits0 = min(cfg.bits, key=lambda b: (abs(b - 4), b))

    def start_at(s: float, bits: int = bits0) -> dict[str, Any]:
        c = global_choice(layers, groups, s, bits)
        return {k: min(v, high) if k.startswith("sparsity_") else v for k, v in c.items()}

    if cfg.max_bytes is None:  # latency budget only: start half sparse, search everything
        start = start_at(high / 2)
        zero = dict.fromkeys(groups, 0.0)
        return BudgetPlan(groups, start, choice_bytes(model, groups, start), zero, high)
    target = cfg.fill * cfg.max_bytes
    # Bisection on the global sparsity: bytes fall as it rises. About 8 artifacts written.
    lo, hi = 0.0, high
    hi_bytes = choice_bytes(model, groups, start_at(hi))
    if hi_bytes > target:  # even the sparsest start is over budget: start there anyway
        lo = hi
    while hi - lo > 2 * GRID:
        mid = _floor((lo + hi) / 2)
        b = choice_bytes(model, groups, start_at(mid))
        if b <= target:
            hi, hi_bytes = mid, b
        else:
            lo = mid
    start = start_at(hi)
    # Bytes per kept weight at the smallest bit width (overheads spread over the kept weights).
    # A group below its low bound would need the whole budget alone, before the other groups,
    # biases and codebooks take their share, so no feasible choice is cut off.
    kept = sum(
        weight_of(layers[n]).numel() * (1.0 - start[f"sparsity_{g}"])
        for g, names in groups.items()
        for n in names
    )
    small = {k: min(cfg.bits) if k.startswith("bits_") else v for k, v in start.items()}
    per_weight = choice_bytes(model, groups, small) / max(kept, 1.0)
    low = {}
    for g, names in groups.items():
        n = sum(weight_of(layers[x]).numel() for x in names)
        floor = max(0.0, _floor(1.0 - cfg.max_bytes / (per_weight * n)))
        low[g] = min(start[f"sparsity_{g}"], floor)
    return BudgetPlan(groups, start, hi_bytes, low, high)
