"""Unstructured pruning masks that hold through fine-tuning, and folding them into real zeros.

A masked layer carries a bool buffer ``weight_mask`` (same shape as ``weight``; True = kept).
The mask is enforced three ways so no optimizer (SGD, AdamW with weight decay or moments) can
regrow a pruned weight:

1. the weight is multiplied by the mask when the mask is applied;
2. a forward pre-hook re-applies it in training mode, before every forward (a user's own loop);
3. :func:`reapply_masks` is the ``after_step`` callback for :func:`slimkit.training.train`, so the
   weights are exactly zero after every optimizer step, including the last one.

The hook is a module-level function that reads ``module.weight_mask``, so ``copy.deepcopy`` and
save -> load (the buffer is recorded by ``slimkit.models.spec``) keep working; a loaded model gets
its hooks back with :func:`attach_masks`. :func:`finalize_` folds the masks into the weights and
removes buffers and hooks, leaving a plain model with real zeros.

Masks are computed from per-layer score tensors keyed by layer name (:func:`masks_from_scores`):
the lowest-scoring weights are pruned, exactly ``round(sparsity * n)`` of them per layer
(``scope="layer"``) or over all targeted layers together (``scope="global"``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import torch
from torch import nn

from slimkit.errors import ConfigError

MASK = "weight_mask"


class Scope(str, enum.Enum):
    """How the sparsity budget is shared: per layer, or over all targeted layers at once."""

    GLOBAL = "global"
    LAYER = "layer"


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight`` typed as a tensor (nn.Module attributes are ``Tensor | Module``)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor to prune")
    return weight


def _mask_pre_hook(module: nn.Module, args: object) -> None:
    # Training-mode only: in eval the weights are already masked (and export stays hook-free).
    if module.training:
        mask = getattr(module, MASK, None)
        if mask is not None:
            with torch.no_grad():
                weight_of(module).mul_(mask)


def _has_hook(module: nn.Module) -> bool:
    return any(h is _mask_pre_hook for h in module._forward_pre_hooks.values())


def _remove_hook(module: nn.Module) -> None:
    for key in [k for k, h in module._forward_pre_hooks.items() if h is _mask_pre_hook]:
        del module._forward_pre_hooks[key]


def _check_layer(name: str, module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"layer {name!r} ({type(module).__name__}) has no weight tensor to prune")
    return weight


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Install ``masks`` (layer name -> bool tensor of the weight's shape) and zero the weights.

    A layer that already has a mask keeps its pruned weights pruned: the new mask is ANDed with
    the old one, so a schedule never regrows what an earlier step removed.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise ConfigError(f"mask given for {name!r}, which is not a layer of the model")
        module = modules[name]
        weight = _check_layer(name, module)
        if tuple(mask.shape) != tuple(weight.shape):
            raise ConfigError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, but the weight has shape "
                f"{tuple(weight.shape)}"
            )
        mask = mask.to(device=weight.device, dtype=torch.bool)
        old = getattr(module, MASK, None)
        if isinstance(old, torch.Tensor):
            mask = mask & old.to(torch.bool)
            module._buffers[MASK] = mask.clone()
        else:
            module.register_buffer(MASK, mask.clone())
        weight.mul_(mask)
        if not _has_hook(module):
            module.register_forward_pre_hook(_mask_pre_hook)


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{layer name: module}`` of every layer that carries a pruning mask."""
    return {
        n: m for n, m in model.named_modules() if isinstance(getattr(m, MASK, None), torch.Tensor)
    }


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: bool mask}`` (True = kept) of every masked layer."""
    return {n: getattr(m, MASK).to(torch.bool) for n, m in masked_layers(model).items()}


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Zero every masked weight again; the ``after_step`` callback of ``training.train``."""
    for m in masked_layers(model).values():
        weight_of(m).mul_(getattr(m, MASK))


def attach_masks(model: nn.Module) -> None:
    """Re-install the forward hooks of masks loaded from a file (buffers survive save/load)."""
    for m in masked_layers(model).values():
        if not _has_hook(m):
            m.register_forward_pre_hook(_mask_pre_hook)


@torch.no_grad()
def finalize_(model: nn.Module) -> nn.Module:
    """Fold masks into real zeros and remove every mask buffer and hook; returns ``model``."""
    for m in list(masked_layers(model).values()):
        weight_of(m).mul_(getattr(m, MASK))
        del m._buffers[MASK]
        _remove_hook(m)
    for m in model.modules():  # stray hooks (mask removed by hand) go too
        _remove_hook(m)
    return model


def layer_sparsity(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Fraction of exactly-zero weights per layer (masked layers, or ``names``)."""
    modules = dict(model.named_modules())
    chosen = names if names is not None else list(masked_layers(model))
    out = {}
    for n in chosen:
        w = _check_layer(n, modules[n])
        out[n] = float((w == 0).sum()) / max(1, w.numel())
    return out


def overall_sparsity(model: nn.Module, names: list[str]) -> float:
    """Fraction of exactly-zero weights over the weights of the named layers together."""
    modules = dict(model.named_modules())
    zeros = total = 0
    for n in names:
        w = _check_layer(n, modules[n])
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(1, total)


def _protect_pruned(
    model: nn.Module, scores: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Scores with already-masked weights set to -inf, so they are pruned first (no regrowth)."""
    modules = dict(model.named_modules())
    out = {}
    for name, s in scores.items():
        s = s.detach().float()
        old = getattr(modules.get(name), MASK, None)
        if isinstance(old, torch.Tensor):
            s = s.masked_fill(~old.to(torch.bool), float("-inf"))
        out[name] = s
    return out


def _lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape with the ``k`` lowest entries False (ties: lower index)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        # Stable sort makes ties (e.g. many exact zeros) deterministic and the count exact.
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    return keep.reshape(scores.shape)


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: Scope | str = Scope.LAYER,
    model: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Prune the lowest scores: exactly ``round(sparsity * n)`` weights per layer or overall.

    With ``model`` given, weights that are already masked are pruned first (scores -> -inf).
    """
    scope = Scope(scope)
    scored = (
        _protect_pruned(model, scores)
        if model is not None
        else {n: s.detach().float() for n, s in scores.items()}
    )
    if scope is Scope.LAYER:
        return {n: _lowest_k_mask(s, round(sparsity * s.numel())) for n, s in scored.items()}
    # Global: one ranking over the concatenation of every layer's scores.
    names = list(scored)
    flat = torch.cat([scored[n].reshape(-1) for n in names]) if names else torch.zeros(0)
    keep = _lowest_k_mask(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n in names:
        size = scored[n].numel()
        out[n] = keep[start : start + size].reshape(scored[n].shape)
        start += size
    return out
