"""CP (CANDECOMP/PARAFAC) decomposition of Conv2d kernels through tensorly (Lebedev et al. 2015).

K (out, in, kh, kw) ~ sum_r lambda_r a_out[:, r] o a_in[:, r] o a_h[:, r] o a_w[:, r]. The conv
becomes four plain Conv2d leaves::

    1x1 in->R  ->  kh x 1 depthwise (groups=R)  ->  1 x kw depthwise (groups=R)  ->  1x1 R->out

with the original stride/padding/dilation split between the vertical and horizontal parts.
Parameters drop from ``out*in*kh*kw`` to ``R*(in + kh + kw + out)``.

Rank rules: ``ratio`` scales the rank whose factors equal the layer's parameter count
(R_eq = out*in*kh*kw / (out + in + kh + kw)); ``energy``/``vbmf`` take the larger of the two
channel-mode ranks (the Tucker estimate, Kim et al. 2016); ``budget`` keeps the most components
that fit; a fixed ``rank`` must lie in 1..prod(shape)/max(shape) (the bound on CP rank).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch
from torch import nn

from slimkit.config import check_int
from slimkit.decomposition.api import DECOMPOSERS
from slimkit.decomposition.base import LayerPlan, LowRankConfig, replace_layers, run
from slimkit.decomposition.rank import RankRule, check_fixed_rank, rank_from_singular_values
from slimkit.decomposition.tucker import (
    conv_eligible,
    conv_geometry,
    copy_bias,
    unfolding_singular_values,
    weight_of,
)


@dataclasses.dataclass(frozen=True)
class CPDecomposition(LowRankConfig):
    """CP on each chosen Conv2d (groups=1, kernel > 1x1), fitted by ALS (tensorly.parafac)."""

    n_iter_max: int = 100  # ALS sweeps (stops early when the error settles)
    seed: int = 0  # random part of the initialisation when R exceeds a mode's size

    def validate(self) -> None:
        check_int("n_iter_max", self.n_iter_max, 1, 100_000)
        check_int("seed", self.seed, 0, 2**31 - 1)


def cp_params(shape: tuple[int, ...], rank: int, bias: int) -> int:
    return rank * sum(shape) + bias


def cp_rank(name: str, layer: nn.Conv2d, cfg: CPDecomposition) -> int:
    w = layer.weight
    shape = tuple(w.shape)
    bias = shape[0] if layer.bias is not None else 0
    bound = math.prod(shape) // max(shape)
    rule = cfg.rank.rule
    if rule is RankRule.RANK:
        check_fixed_rank(
            int(cfg.rank.value), bound, f"{name} (CP rank bound prod(shape)/max(shape))"
        )
        return int(cfg.rank.value)
    if rule is RankRule.RATIO:
        r_eq = w.numel() / sum(shape)
        return max(1, min(bound, math.ceil(cfg.rank.value * r_eq)))
    if rule is RankRule.BUDGET:
        r = int((cfg.rank.value * (w.numel() + bias) - bias) // sum(shape))
        return max(1, min(bound, r))
    ranks = [
        rank_from_singular_values(
            unfolding_singular_values(w, mode),
            cfg.rank,
            layer=f"{name} (mode {mode})",
            shape=(shape[mode], w.numel() // shape[mode]),
        )
        for mode in (0, 1)
    ]
    return max(1, min(bound, max(ranks)))


def parafac4(weight: torch.Tensor, rank: int, n_iter_max: int, seed: int):
    """tensorly ALS in float64 under a scoped backend (the caller's backend is restored).

    The NumPy backend is used: on these small kernels its ALS sweeps are ~3x faster than the
    PyTorch backend's (measured on LeNet-5 conv2, rank 79) and the factors are the same.
    """
    import tensorly as tl
    from tensorly.decomposition import parafac
    from threadpoolctl import threadpool_limits  # ships with scikit-learn

    # One BLAS thread: ALS on these small matrices is ~8x slower when BLAS threads contend.
    with (
        tl.backend_context("numpy", local_threadsafe=True),
        threadpool_limits(1),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # "n_eigenvecs larger than the mode": R > in or kh is fine
        cp = parafac(
            weight.detach().double().cpu().numpy(),
            rank=rank,
            n_iter_max=n_iter_max,
            init="svd",
            random_state=seed,
            tol=1e-7,
            normalize_factors=True,
        )
    lam = torch.from_numpy(cp.weights)
    a_out, a_in, a_h, a_w = (torch.from_numpy(f) for f in cp.factors)
    return lam, a_out, a_in, a_h, a_w  # (R,), (out, R), (in, R), (kh, R), (kw, R)


def factorise_conv_cp(
    layer: nn.Conv2d, rank: int, n_iter_max: int = 100, seed: int = 0
) -> nn.Sequential:
    lam, a_out, a_in, a_h, a_w = parafac4(layer.weight, rank, n_iter_max, seed)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(layer)
    dtype = layer.weight.dtype
    first = nn.Conv2d(layer.in_channels, rank, 1, bias=False)
    vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank, bias=False)
    horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank, bias=False)
    last = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
    # Spread |lambda| evenly over the four factors (its sign goes to the last) to balance scales.
    scale = lam.abs().clamp_min(1e-30).pow(0.25)
    sign = torch.where(lam < 0, -1.0, 1.0).double()
    first.weight.data.copy_((a_in * scale).t()[:, :, None, None].to(dtype))  # (R, in, 1, 1)
    vertical.weight.data.copy_((a_h * scale).t()[:, None, :, None].to(dtype))  # (R, 1, kh, 1)
    horizontal.weight.data.copy_((a_w * scale).t()[:, None, None, :].to(dtype))  # (R, 1, 1, kw)
    last.weight.data.copy_((a_out * scale * sign)[:, :, None, None].to(dtype))  # (out, R, 1, 1)
    copy_bias(last, layer)
    return nn.Sequential(first, vertical, horizontal, last)


def cp_weight(new: nn.Sequential) -> torch.Tensor:
    """The kernel (out, in, kh, kw) that the four-conv CP block computes."""
    a_in = weight_of(new, 0)[:, :, 0, 0].double()  # (R, in)
    a_h = weight_of(new, 1)[:, 0, :, 0].double()  # (R, kh)
    a_w = weight_of(new, 2)[:, 0, 0, :].double()  # (R, kw)
    a_out = weight_of(new, 3)[:, :, 0, 0].double()  # (out, R)
    return torch.einsum("or,ri,rh,rw->oihw", a_out, a_in, a_h, a_w)


def _plan(name: str, layer: nn.Conv2d, cfg: CPDecomposition) -> tuple[nn.Module | None, LayerPlan]:
    shape = tuple(layer.weight.shape)
    bias = shape[0] if layer.bias is not None else 0
    before = layer.weight.numel() + bias
    rank = cp_rank(name, layer, cfg)
    after = cp_params(shape, rank, bias)
    plan = LayerPlan(name, "cp", list(shape), rank, before, after, False)
    if cfg.skip_if_larger and after >= before:
        return None, plan
    new = factorise_conv_cp(layer, rank, cfg.n_iter_max, cfg.seed)
    w = layer.weight.double()
    plan.rel_error = float((w - cp_weight(new)).norm() / w.norm().clamp_min(1e-300))
    return new, plan


@DECOMPOSERS.register(CPDecomposition)
def cp_decompose(model: nn.Module, cfg: CPDecomposition, data: Any = None, **_: Any) -> nn.Module:
    """Replace every chosen Conv2d by its CP factorisation, in place."""

    def apply(m: nn.Module) -> None:
        replace_layers(m, cfg, (nn.Conv2d,), lambda n, c: _plan(n, c, cfg), eligible=conv_eligible)  # type: ignore[arg-type]

    return run(model, cfg, data, apply)
