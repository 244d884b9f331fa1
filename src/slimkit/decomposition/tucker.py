"""Tucker-2 decomposition of Conv2d kernels through tensorly (Kim et al., ICLR 2016).

The kernel K (out, in, kh, kw) is decomposed along its two channel modes only:
K ~ core x_0 U_out x_1 U_in with core (r_out, r_in, kh, kw), U_out (out, r_out), U_in (in, r_in).
The conv becomes ``Sequential(1x1 in->r_in, kh x kw r_in->r_out, 1x1 r_out->out)``: plain Conv2d
leaves, the middle one keeping the original stride, padding and dilation.

Ranks per mode come from the singular values of the mode unfoldings (ratio, energy, VBMF as in
Kim et al.); ``budget`` scales both modes by one ratio until the factors fit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from slimkit.config import check_int
from slimkit.decomposition.api import DECOMPOSERS
from slimkit.decomposition.base import LayerPlan, LowRankConfig, replace_layers, run
from slimkit.decomposition.rank import RankRule, check_fixed_rank, rank_from_singular_values


@dataclasses.dataclass(frozen=True)
class TuckerDecomposition(LowRankConfig):
    """Tucker-2 on the (out, in) modes of each chosen Conv2d (groups=1, kernel > 1x1)."""

    n_iter_max: int = 50  # HOOI iterations of tensorly.partial_tucker

    def validate(self) -> None:
        check_int("n_iter_max", self.n_iter_max, 1, 10_000)


def unfolding_singular_values(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Singular values of the mode-``mode`` unfolding (dim ``mode`` x everything else)."""
    mat = weight.detach().double().movedim(mode, 0).reshape(weight.shape[mode], -1)
    return torch.linalg.svdvals(mat)


def conv_eligible(m: nn.Module) -> str | None:
    """Why a Conv2d cannot be decomposed here, or None."""
    assert isinstance(m, nn.Conv2d)
    if m.groups != 1:
        return f"grouped conv (groups={m.groups}) is already factorised"
    if m.padding_mode != "zeros":
        return f"padding_mode {m.padding_mode!r} is not supported"
    if isinstance(m.padding, str):
        return f"string padding {m.padding!r} is not supported"
    if m.kernel_size == (1, 1):
        return "1x1 conv: use svd (it is a matrix)"
    return None


Pair = tuple[int, int]


def conv_geometry(layer: nn.Conv2d) -> tuple[Pair, Pair, Pair, Pair]:
    """(kernel, stride, padding, dilation) as int pairs; string padding is never eligible."""
    k, st, dl, pd = layer.kernel_size, layer.stride, layer.dilation, layer.padding
    assert not isinstance(pd, str)
    return (k[0], k[1]), (st[0], st[1]), (int(pd[0]), int(pd[1])), (dl[0], dl[1])


def weight_of(seq: nn.Sequential, i: int) -> torch.Tensor:
    """The weight tensor of the i-th layer of a replacement block."""
    w = seq[i].weight
    assert isinstance(w, torch.Tensor)
    return w


def copy_bias(
    dst: nn.Conv2d | nn.Linear, src: nn.Conv2d | nn.Linear, shift: torch.Tensor | None = None
) -> None:
    """Copy the original bias (plus an optional fitted shift) into the replacement's last layer."""
    if src.bias is not None and dst.bias is not None:
        dst.bias.data.copy_(
            src.bias.detach() + (shift.to(src.bias.dtype) if shift is not None else 0)
        )


def tucker_params(shape: tuple[int, ...], r_out: int, r_in: int, bias: int) -> int:
    out_c, in_c, kh, kw = shape
    return in_c * r_in + r_in * r_out * kh * kw + r_out * out_c + bias


def tucker_ranks(name: str, layer: nn.Conv2d, cfg: TuckerDecomposition) -> tuple[int, int]:
    w = layer.weight
    out_c, in_c = w.shape[:2]
    bias = out_c if layer.bias is not None else 0
    rule = cfg.rank.rule
    if rule is RankRule.RANK:
        r = int(cfg.rank.value)
        check_fixed_rank(r, out_c, f"{name} (output-channel mode)")
        check_fixed_rank(r, in_c, f"{name} (input-channel mode)")
        return r, r
    if rule is RankRule.BUDGET:
        budget = cfg.rank.value * w.numel() + bias
        for step in range(100, 0, -1):  # largest common ratio whose factors fit the budget
            r_out, r_in = math.ceil(step / 100 * out_c), math.ceil(step / 100 * in_c)
            if tucker_params(tuple(w.shape), r_out, r_in, bias) <= budget:
                return r_out, r_in
        return 1, 1
    ranks = []
    for mode in (0, 1):
        s = unfolding_singular_values(w, mode)
        ranks.append(
            rank_from_singular_values(
                s,
                cfg.rank,
                layer=f"{name} (mode {mode})",
                shape=(w.shape[mode], w.numel() // w.shape[mode]),
            )
        )
    return ranks[0], ranks[1]


def partial_tucker2(weight: torch.Tensor, r_out: int, r_in: int, n_iter_max: int):
    """tensorly's HOOI on modes (0, 1) in float64 with its PyTorch backend, restored afterwards."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("pytorch", local_threadsafe=True):
        (core, (u_out, u_in)), _ = partial_tucker(
            weight.detach().double(),
            rank=[r_out, r_in],
            modes=[0, 1],
            init="svd",
            n_iter_max=n_iter_max,
            random_state=0,
        )
    return core, u_out, u_in  # (r_out, r_in, kh, kw), (out, r_out), (in, r_in)


def factorise_conv_tucker(
    layer: nn.Conv2d, r_out: int, r_in: int, n_iter_max: int = 50
) -> nn.Sequential:
    core, u_out, u_in = partial_tucker2(layer.weight, r_out, r_in, n_iter_max)
    dtype = layer.weight.dtype
    first = nn.Conv2d(layer.in_channels, r_in, 1, bias=False)
    kernel, stride, padding, dilation = conv_geometry(layer)
    middle = nn.Conv2d(r_in, r_out, kernel, stride, padding, dilation, bias=False)
    last = nn.Conv2d(r_out, layer.out_channels, 1, bias=layer.bias is not None)
    first.weight.data.copy_(u_in.t()[:, :, None, None].to(dtype))  # (in, r_in) -> (r_in, in, 1, 1)
    middle.weight.data.copy_(core.to(dtype))  # (r_out, r_in, kh, kw)
    last.weight.data.copy_(u_out[:, :, None, None].to(dtype))  # (out, r_out) -> (out, r_out, 1, 1)
    copy_bias(last, layer)
    return nn.Sequential(first, middle, last)


def _weight_error(layer: nn.Conv2d, new: nn.Sequential) -> float:
    first, middle, last = (weight_of(new, i) for i in range(3))
    # Rebuild K = core x_0 U_out x_1 U_in to measure ||K - K_r|| / ||K||.
    k = torch.einsum(
        "oa,abhw,bi->oihw", last[:, :, 0, 0].double(), middle.double(), first[:, :, 0, 0].double()
    )
    w = layer.weight.double()
    return float((w - k).norm() / w.norm().clamp_min(1e-300))


def _plan(
    name: str, layer: nn.Conv2d, cfg: TuckerDecomposition
) -> tuple[nn.Module | None, LayerPlan]:
    shape = tuple(layer.weight.shape)
    bias = shape[0] if layer.bias is not None else 0
    before = layer.weight.numel() + bias
    r_out, r_in = tucker_ranks(name, layer, cfg)
    after = tucker_params(shape, r_out, r_in, bias)
    plan = LayerPlan(name, "tucker", list(shape), [r_out, r_in], before, after, False)
    if cfg.skip_if_larger and after >= before:
        return None, plan
    new = factorise_conv_tucker(layer, r_out, r_in, cfg.n_iter_max)
    plan.rel_error = _weight_error(layer, new)
    return new, plan


@DECOMPOSERS.register(TuckerDecomposition)
def tucker_decompose(
    model: nn.Module, cfg: TuckerDecomposition, data: Any = None, **_: Any
) -> nn.Module:
    """Replace every chosen Conv2d by its Tucker-2 factorisation, in place."""

    def apply(m: nn.Module) -> None:
        replace_layers(m, cfg, (nn.Conv2d,), lambda n, c: _plan(n, c, cfg), eligible=conv_eligible)  # type: ignore[arg-type]

    return run(model, cfg, data, apply)
