"""Truncated SVD of Linear and 1x1 Conv2d layers: W (out, in) ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T).

A Linear becomes ``Sequential(Linear(in, r, bias=False), Linear(r, out, bias))`` and a 1x1 conv
(groups=1) two 1x1 convs, the first keeping its stride and padding: plain leaves that
:mod:`slimkit.models.spec` rebuilds. Parameters drop from ``out*in`` to ``r*(in + out)``;
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
    """Low-rank Linear and 1x1 Conv2d layers; ``rank`` is a ratio, energy, budget, fixed rank or
    VBMF rule. Larger conv kernels are left to Tucker/CP (skipped here with a reason)."""


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
    if layer.bias is not None and second.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def factorise_pointwise(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """Two 1x1 convs of rank ``rank`` for a 1x1 conv (its weight is a matrix (out, in))."""
    u, s, vh = svd_factors(layer.weight[:, :, 0, 0])
    root = s[:rank].sqrt()
    first = nn.Conv2d(layer.in_channels, rank, 1, layer.stride, layer.padding, bias=False)  # type: ignore[arg-type]
    second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
    dtype = layer.weight.dtype
    first.weight.data.copy_(
        (root[:, None] * vh[:rank])[:, :, None, None].to(dtype)
    )  # (r, in, 1, 1)
    second.weight.data.copy_(
        (u[:, :rank] * root[None, :])[:, :, None, None].to(dtype)
    )  # (out, r, 1, 1)
    if layer.bias is not None and second.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def svd_eligible(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        if m.kernel_size != (1, 1):
            return "SVD takes Linear and 1x1 Conv2d; use tucker or cp for larger kernels"
        if m.groups != 1:
            return f"grouped conv (groups={m.groups})"
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            return "string padding or non-zero padding_mode is not supported"
    return None


def _plan(name: str, layer: nn.Module, cfg: SVDDecomposition) -> tuple[nn.Module | None, LayerPlan]:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    matrix = weight[:, :, 0, 0] if weight.dim() == 4 else weight  # (out, in)
    out_f, in_f = matrix.shape
    bias = out_f if getattr(layer, "bias", None) is not None else 0
    before = out_f * in_f + bias
    _, s, _ = svd_factors(matrix)
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
    if isinstance(layer, nn.Conv2d):
        return factorise_pointwise(layer, rank), plan
    assert isinstance(layer, nn.Linear)
    return factorise_linear(layer, rank), plan


@DECOMPOSERS.register(SVDDecomposition)
def svd_decompose(model: nn.Module, cfg: SVDDecomposition, data: Any = None, **_: Any) -> nn.Module:
    """Replace every chosen Linear / 1x1 Conv2d by its rank-r factorisation, in place."""

    def apply(m: nn.Module) -> None:
        replace_layers(
            m,
            cfg,
            (nn.Linear, nn.Conv2d),
            lambda n, layer: _plan(n, layer, cfg),
            eligible=svd_eligible,
        )

    return run(model, cfg, data, apply)
