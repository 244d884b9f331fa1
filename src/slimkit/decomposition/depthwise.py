"""Replace a standard Conv2d by a depthwise-separable pair (MobileNet, Howard et al. 2017).

K (out, in, kh, kw) becomes ``Sequential(kh x kw depthwise in->in (groups=in), 1x1 in->out)``:
parameters drop from ``out*in*kh*kw`` to ``in*kh*kw + in*out``. The pair is initialised

1. without data: per input channel c, the best rank-1 fit of the slice K[:, c] (out, kh*kw),
   i.e. pointwise column P[:, c] times depthwise filter D[c] (the weight-space optimum);
2. with ``data``: then refined by alternating least squares on the layer's own inputs from the
   calibration loader, minimising ||Y - P (D * X) - b||^2 over the original outputs Y. Both
   half-steps are linear and are solved in closed form from Gram matrices (ridge-regularised);
   the lower-error of init and fit is kept.

Layers are fitted in model order on the inputs the already-replaced model produces. The target
Y is the original layer's weights applied to those same inputs, so each pair matches its own
layer's function where the model actually feeds it; it does not correct the error earlier
replacements left in its inputs (that would need the original model's activations as the
target). ``recovery`` then fine-tunes or distils the whole model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import SlimConfig, check_int, check_range
from slimkit.decomposition.api import DECOMPOSERS
from slimkit.decomposition.base import LayerPlan, Recovery, replace_layers, run
from slimkit.decomposition.tucker import conv_eligible, conv_geometry, copy_bias


@dataclasses.dataclass(frozen=True)
class DepthwiseSeparable(SlimConfig):
    """Depthwise-separable replacement of each chosen Conv2d (groups=1, kernel > 1x1, in > 1)."""

    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    calib_batches: int = 4  # batches of data.calib used for the least-squares fit
    als_iters: int = 4  # alternating least-squares sweeps (0: weight-space init only)
    ridge: float = 1e-5  # Tikhonov term, relative to the Gram matrix's mean diagonal
    max_rows: int = 20_000  # output positions sampled for the fit (memory bound)
    skip_if_larger: bool = True
    recovery: Recovery = Recovery()

    def __post_init__(self) -> None:
        if isinstance(self.recovery, dict):
            object.__setattr__(self, "recovery", Recovery.from_dict(self.recovery))
        for field in ("targets", "ignore"):
            if isinstance(getattr(self, field), str):
                object.__setattr__(self, field, (getattr(self, field),))
        super().__post_init__()

    def validate(self) -> None:
        check_int("calib_batches", self.calib_batches, 1, 10_000)
        check_int("als_iters", self.als_iters, 0, 1000)
        check_range("ridge", self.ridge, 0.0, 1.0)
        check_int("max_rows", self.max_rows, 16, 10**8)


def depthwise_eligible(m: nn.Module) -> str | None:
    reason = conv_eligible(m)
    if reason is None and m.in_channels == 1:  # type: ignore[union-attr]
        return (
            "1 input channel: the separable form would be a single spatial filter for all outputs"
        )
    return reason


def init_from_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 SVD of each input channel's slice: P (out, in), D (in, kh*kw), in float64."""
    w = weight.detach().double().flatten(2).permute(1, 0, 2)  # (in, out, kk)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # batched over input channels
    p = (u[:, :, 0] * s[:, :1]).t()  # (out, in)
    d = vh[:, 0, :]  # (in, kk)
    return p, d


def _solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    reg = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + reg * eye, rhs)


def fit_separable(
    q: torch.Tensor,
    y: torch.Tensor,
    p: torch.Tensor,
    d: torch.Tensor,
    with_bias: bool,
    iters: int,
    ridge: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """ALS on patches q (rows, in, kk) and targets y (rows, out); returns P, D, b, rel. error."""
    rows, n_in, kk = q.shape
    n_out = y.shape[1]
    qf = q.reshape(rows, n_in * kk)
    qq = (qf.t() @ qf).reshape(n_in, kk, n_in, kk)  # Gram of all patches, computed once
    b = torch.zeros(n_out, dtype=y.dtype)
    y_norm = y.norm().clamp_min(1e-300)

    def error(p_: torch.Tensor, d_: torch.Tensor, b_: torch.Tensor) -> float:
        z = torch.einsum("nck,ck->nc", q, d_)  # (rows, in): depthwise outputs
        return float((y - z @ p_.t() - b_).norm() / y_norm)

    best = (p, d, b, error(p, d, b))
    for _ in range(iters):
        # P, b step: regress y on the depthwise outputs z (+ a constant column).
        z = torch.einsum("nck,ck->nc", q, d)
        if with_bias:
            z = torch.cat([z, torch.ones(rows, 1, dtype=z.dtype)], 1)
        sol = _solve(z.t() @ z, z.t() @ y, ridge)  # (in [+1], out)
        p, b = sol[:n_in].t(), (sol[n_in] if with_bias else b)
        # D step: y - b = sum_c P[:, c] (q_c . d_c) is linear in D; Gram = (P^T P) (x) (Q^T Q).
        ptp = p.t() @ p  # (in, in)
        gram = (ptp[:, None, :, None] * qq).reshape(n_in * kk, n_in * kk)
        yp = (y - b) @ p  # (rows, in)
        rhs = torch.einsum("nck,nc->ck", q, yp).reshape(-1)
        d = _solve(gram, rhs[:, None], ridge).reshape(n_in, kk)
        err = error(p, d, b)
        if err < best[3]:
            best = (p, d, b, err)
    return best


@torch.no_grad()
def _layer_io(model: nn.Module, layer: nn.Conv2d, data: Any, cfg: DepthwiseSeparable):
    """Patches (rows, in, kk) of the layer's inputs and its outputs minus bias (rows, out)."""
    inputs: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inp, _o: inputs.append(inp[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for i, (x, _) in enumerate(data.calib):
            if i >= cfg.calib_batches:
                break
            model(x)
    finally:
        hook.remove()
        model.train(was_training)
    x = torch.cat(inputs).double()
    patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # type: ignore[arg-type]
    n, _, positions = patches.shape
    q = patches.transpose(1, 2).reshape(n * positions, layer.in_channels, -1)  # (rows, in, kk)
    w = layer.weight.double().reshape(layer.out_channels, -1)  # (out, in*kk)
    y = q.reshape(len(q), -1) @ w.t()  # (rows, out): the conv without bias
    if len(q) > cfg.max_rows:
        keep = torch.randperm(len(q), generator=torch.Generator().manual_seed(0))[: cfg.max_rows]
        q, y = q[keep], y[keep]
    return q, y


def build_separable(
    layer: nn.Conv2d, p: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None
) -> nn.Sequential:
    n_in, n_out = layer.in_channels, layer.out_channels
    kernel, stride, padding, dilation = conv_geometry(layer)
    dw = nn.Conv2d(n_in, n_in, kernel, stride, padding, dilation, groups=n_in, bias=False)
    pw = nn.Conv2d(n_in, n_out, 1, bias=layer.bias is not None)
    dtype = layer.weight.dtype
    dw.weight.data.copy_(d.reshape(n_in, 1, *kernel).to(dtype))  # (in, kh*kw) -> (in, 1, kh, kw)
    pw.weight.data.copy_(p[:, :, None, None].to(dtype))  # (out, in) -> (out, in, 1, 1)
    copy_bias(pw, layer, b)
    return nn.Sequential(dw, pw)


def _plan(model: nn.Module, name: str, layer: nn.Conv2d, cfg: DepthwiseSeparable, data: Any):
    shape = list(layer.weight.shape)
    out_c, in_c, kh, kw = shape
    bias = out_c if layer.bias is not None else 0
    before = layer.weight.numel() + bias
    after = in_c * kh * kw + in_c * out_c + bias
    plan = LayerPlan(name, "depthwise", shape, None, before, after, False)
    if cfg.skip_if_larger and after >= before:
        return None, plan
    p, d = init_from_weight(layer.weight)
    b = None
    if data is not None:
        q, y = _layer_io(model, layer, data, cfg)
        p, d, b, err = fit_separable(q, y, p, d, layer.bias is not None, cfg.als_iters, cfg.ridge)
        plan.rel_error = err  # relative output error on the calibration patches
        plan.reason = f"least-squares fit on {len(q)} calibration positions"
    else:
        w = layer.weight.double().flatten(2)  # (out, in, kk)
        plan.rel_error = float((w - p[:, :, None] * d[None]).norm() / w.norm())
        plan.reason = "weight-space init only (no data given)"
    return build_separable(layer, p, d, b), plan


@DECOMPOSERS.register(DepthwiseSeparable)
def depthwise_decompose(
    model: nn.Module, cfg: DepthwiseSeparable, data: Any = None, **_: Any
) -> nn.Module:
    """Replace every chosen Conv2d by a fitted depthwise-separable pair, in place."""

    def apply(m: nn.Module) -> None:
        replace_layers(
            m,
            cfg,
            (nn.Conv2d,),
            lambda n, c: _plan(m, n, c, cfg, data),  # type: ignore[arg-type]
            eligible=depthwise_eligible,
        )

    return run(model, cfg, data, apply)
