"""Truncated SVD of Linear layers: W (out, in) ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T).

The layer becomes ``Sequential(Linear(in, r, bias=False), Linear(r, out, bias))``, plain leaves
that :mod:`slimkit.models.spec` rebuilds. Parameters drop from ``out*in`` to ``r*(in + out)``;
a layer where that is not smaller is skipped (Denton et al. 2014, Xue et al. 2013).

    sk.decompose_(model, SVDDecomposition(rank=RankSpec("energy", 0.9), targets=["re:fc.*"]))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from slimkit.decomposition.api import DECOMPOSERS
from slimkit.decomposition.base import LayerPlan, LowRankConfig, replace_layers, run
from slimkit.decomposition.rank import rank_from_singular_values


@dataclasses.dataclass(frozen=True)
class SVDDecomposition(LowRankConfig):
    """Low-rank Linear layers; ``rank`` is a ratio, energy, budget, fixed rank or VBMF rule."""


def svd_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full SVD in float64 for stable small singular values: (out, k), (k,), (k, in)."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return u, s, vh


def factorise_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Two Linears of rank ``rank`` whose product is the best rank-r approximation of W."""
    u, s, vh = svd_factors(layer.weight)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    dtype = layer.weight.dtype
    first.weight.data.copy_((root[:, None] * vh[:rank]).to(dtype))  # (r, in)
    second.weight.data.copy_((u[:, :rank] * root[None, :]).to(dtype))  # (out, r)
    if layer.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def _plan(name: str, layer: nn.Linear, cfg: SVDDecomposition) -> tuple[nn.Module | None, LayerPlan]:
    out_f, in_f = layer.weight.shape
    bias = out_f if layer.bias is not None else 0
    before = out_f * in_f + bias
    _, s, _ = svd_factors(layer.weight)
    rank = rank_from_singular_values(
        s,
        cfg.rank,
        layer=name,
        params_at=lambda r: r * (in_f + out_f) + bias,
        original_params=before,
        shape=(out_f, in_f),
    )
    e = s.pow(2)
    rel = float((e[rank:].sum() / e.sum().clamp_min(1e-300)).sqrt())  # Eckart-Young error
    after = rank * (in_f + out_f) + bias
    plan = LayerPlan(name, "svd", [out_f, in_f], rank, before, after, False, rel_error=rel)
    if cfg.skip_if_larger and after >= before:
        return None, plan
    return factorise_linear(layer, rank), plan


@DECOMPOSERS.register(SVDDecomposition)
def svd_decompose(model: nn.Module, cfg: SVDDecomposition, data: Any = None, **_: Any) -> nn.Module:
    """Replace every chosen Linear by its rank-r factorisation, in place."""

    def apply(m: nn.Module) -> None:
        replace_layers(m, cfg, (nn.Linear,), lambda n, layer: _plan(n, layer, cfg))  # type: ignore[arg-type]

    return run(model, cfg, data, apply)
