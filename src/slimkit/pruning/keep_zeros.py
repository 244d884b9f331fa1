"""Keep pruned weights at zero while a model trains further (fine-tuning, distillation).

A finalized pruned model holds plain zeros, not masks: any optimizer step would move them and
hand back a dense model. ``zero_keeper`` reads which weights are zero now and returns an
``after_step`` hook that multiplies them back to zero after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# A layer counts as pruned from this share of exact zeros: a trained or freshly initialised
# layer has almost none, a pruned one has its sparsity's worth.
MIN_ZERO_SHARE = 0.1


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> nonzero mask of every Linear/Conv2d with ``MIN_ZERO_SHARE`` zero weights."""
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nz = m.weight.detach() != 0
            if float((~nz).float().mean()) >= MIN_ZERO_SHARE:
                masks[name] = nz
    return masks


def mask_keeper(
    masks: dict[str, torch.Tensor], model: nn.Module
) -> Callable[[nn.Module], None] | None:
    """after_step that multiplies the weight of each layer of ``model`` named in ``masks`` by its
    mask; None when there are no masks.

    Layers are looked up by name in ``model`` now, so masks read before a layer was swapped for
    another of the same name (int8 fake-quant layers) apply to the new layer.
    """
    if not masks:
        return None
    modules = dict(model.named_modules())
    layers = {name: modules[name] for name in masks}

    def keep(_m: nn.Module) -> None:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.mul_(masks[name].to(layer.weight.device))

    return keep


def zero_keeper(model: nn.Module) -> Callable[[nn.Module], None] | None:
    """after_step that keeps the zero weights of pruned Linear/Conv2d layers at zero; None
    when no layer has ``MIN_ZERO_SHARE`` of its weights at zero."""
    return mask_keeper(zero_masks(model), model)


def chain(*hooks: Callable[[nn.Module], None] | None) -> Callable[[nn.Module], None] | None:
    """One after_step hook that runs the given ones in order (None entries skipped)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def run(m: nn.Module) -> None:
        for h in live:
            h(m)

    return run
