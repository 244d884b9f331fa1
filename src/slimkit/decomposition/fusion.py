"""Conv-BN and Linear-BN fusion for inference (BatchNorm folded into the preceding layer).

For a layer ``y = W x + b`` followed by BatchNorm with running stats ``mu, var`` and affine
``gamma, beta``, the fused layer is::

    s  = gamma / sqrt(var + eps)        # (out,)
    W' = W * s[:, None, ...]            # (out, in/groups, kh, kw) scaled per output channel
    b' = (b - mu) * s + beta            # (out,)

A BatchNorm without running statistics (``track_running_stats=False``) normalizes with batch
statistics even in eval mode, so it cannot be folded: it is left in place and not reported.
The BatchNorm module is replaced by ``nn.Identity`` so names of every other layer stay the same
(plans keyed by layer name keep working), and the result saves/loads/exports like any model.
Pairs are found with ``torch.fx`` (the BN must be the only user of the layer's output); a model
that does not trace falls back to adjacent pairs inside ``nn.Sequential`` containers.
PTQ and QAT call :func:`fuse_batchnorm` before inserting fake-quant wrappers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from slimkit.config import SlimConfig, get_module, set_module
from slimkit.decomposition.api import DECOMPOSERS
from slimkit.errors import ConfigError

_BN = nn.modules.batchnorm._BatchNorm


@dataclasses.dataclass(frozen=True)
class FuseBatchNorm(SlimConfig):
    """Fold every BatchNorm that directly follows a Conv2d/Linear into that layer (eval only)."""


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """``[(layer_name, bn_name)]`` from the traced graph, or None when the model does not trace."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure means "use the fallback"
        return None
    modules = dict(model.named_modules())
    calls: dict[object, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
            continue
        layer = modules.get(prev.target)
        # A layer called twice or whose output also goes elsewhere cannot absorb the BN.
        if (
            isinstance(layer, (nn.Conv2d, nn.Linear))
            and len(prev.users) == 1
            and calls[prev.target] == 1
            and calls[node.target] == 1
        ):
            pairs.append((str(prev.target), str(node.target)))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        children = list(m.named_children())
        for (n1, a), (n2, b) in zip(children, children[1:]):
            if isinstance(a, (nn.Conv2d, nn.Linear)) and isinstance(b, _BN):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + n1, prefix + n2))
    return pairs


def find_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Names of ``(layer, batchnorm)`` pairs that can be fused, in model order."""
    pairs = _fx_pairs(model)
    return _sequential_pairs(model) if pairs is None else pairs


def unfoldable_reason(layer: nn.Conv2d | nn.Linear, bn: _BN) -> str | None:
    """Why ``bn`` cannot be folded into ``layer``, or None when it can."""
    if bn.running_mean is None or bn.running_var is None:
        return (
            "it has no running statistics (track_running_stats=False), so it normalizes with "
            "each batch's statistics even in eval mode"
        )
    if bn.num_features != layer.weight.shape[0]:
        return f"it has {bn.num_features} features but the layer {layer.weight.shape[0]} outputs"
    return None


@torch.no_grad()
def fold_bn_into(layer: nn.Conv2d | nn.Linear, bn: _BN) -> bool:
    """Fold ``bn``'s running statistics and affine parameters into ``layer`` in place.

    Returns False, leaving ``layer`` untouched, when the BN cannot be folded
    (:func:`unfoldable_reason`).
    """
    if unfoldable_reason(layer, bn) is not None:
        return False
    assert bn.running_mean is not None and bn.running_var is not None
    w = layer.weight
    out = w.shape[0]
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)  # (out,)
    if bn.affine:
        scale = scale * bn.weight.double()
    bias = layer.bias.double() if layer.bias is not None else torch.zeros(out, dtype=torch.float64)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(scale)
    new_bias = (bias - bn.running_mean.double()) * scale + beta  # (out,)
    shape = (out,) + (1,) * (w.dim() - 1)
    layer.weight.copy_((w.double() * scale.view(shape)).to(w.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(w.dtype))
    else:
        layer.bias.copy_(new_bias.to(w.dtype))
    return True


def fuse_batchnorm(model: nn.Module, *, strict: bool = False) -> list[tuple[str, str]]:
    """Fold every fusable BatchNorm into its layer, replace it by Identity; return those pairs.

    A BatchNorm that follows a layer but cannot be folded (no running statistics) stays in
    place and is not in the returned pairs; with ``strict=True`` it is an error instead, raised
    before the model is changed (int8 needs every such BN folded into its integer conv).
    """
    pairs = []
    for layer_name, bn_name in find_bn_pairs(model):
        layer, bn = get_module(model, layer_name), get_module(model, bn_name)
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(bn, _BN):
            pairs.append((layer_name, bn_name, layer, bn))
    if strict:
        for layer_name, bn_name, layer, bn in pairs:
            reason = unfoldable_reason(layer, bn)
            if reason is not None and bn.num_features == layer.weight.shape[0]:
                raise ConfigError(
                    f"BatchNorm {bn_name!r} after {layer_name!r} must be folded into it, but "
                    f"{reason}; give it running statistics (track_running_stats=True, then "
                    "calibrate it in train mode) or replace it before quantizing"
                )
    done = []
    for layer_name, bn_name, layer, bn in pairs:
        if fold_bn_into(layer, bn):
            set_module(model, bn_name, nn.Identity())
            done.append((layer_name, bn_name))
    return done


@DECOMPOSERS.register(FuseBatchNorm)
def _fuse(model: nn.Module, config: FuseBatchNorm, **_: object) -> nn.Module:
    model.eval()
    fuse_batchnorm(model)
    return model
