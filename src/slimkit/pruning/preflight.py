"""Pre-flight check for structural channel pruning: refuse layers the engine cannot resize.

Torch-Pruning's DependencyGraph resizes Conv2d / Linear / BatchNorm / LayerNorm and passes shape
changes through parameter-free ops (add, cat, pooling, activations, flatten). A module that holds
its own weights of another type (a custom layer with an ``nn.Parameter``), or a grouped conv whose
groups cannot shrink consistently, would be traced as an opaque op and silently left with the old
shapes, so it is named here before any work starts.

A layer that still carries an unstructured pruning mask (slimkit's ``weight_mask`` buffer, which
``torch.nn.utils.prune`` uses too) or a ``torch.nn.utils.parametrize`` parametrization is refused
as well: the engine slices ``weight`` and ``bias`` only, so the mask would keep the old shape and
the next training-mode forward (or ``slimkit.load``) fails, or a stale mask zeroes the wrong
weights. Structured pruning goes first, unstructured after; or fold the masks with
``finalize_(model)`` before removing channels.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.utils import parametrize

from slimkit.errors import ConfigError
from slimkit.pruning.masks import MASK, masked_layers

# Types whose own parameters/buffers the engine knows how to slice (plus extra types that callers
# register, e.g. slimkit's channel gates while they are inserted).
SUPPORTED: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
)


def _has_own_state(m: nn.Module) -> bool:
    own_params = any(True for _ in m.parameters(recurse=False))
    own_buffers = any(b is not None for _, b in m.named_buffers(recurse=False))
    return own_params or own_buffers


def refuse_masks(model: nn.Module) -> None:
    """Raise ConfigError naming every layer that carries a pruning mask or a parametrization."""
    layers = masked_layers(model)
    masked = [n or "<root>" for n in layers]
    if masked:
        # torch.nn.utils.prune keeps weight_orig and a hook of its own, which finalize_ leaves.
        torch_pruned = [n or "<root>" for n, m in layers.items() if hasattr(m, "weight_orig")]
        fold = (
            f"torch.nn.utils.prune.remove(layer, 'weight') on each of {torch_pruned}"
            if torch_pruned
            else "slimkit.pruning.finalize_(model) (in a recipe: finalize: true on the prune stage)"
        )
        raise ConfigError(
            f"structural pruning changes layer shapes, but layers {masked} still carry "
            f"unstructured pruning masks ({MASK!r}) that would keep their old shapes; apply "
            f"structured (channel) pruning before unstructured pruning, or fold the masks into "
            f"zeros first with {fold}"
        )
    wrapped = [n or "<root>" for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if wrapped:
        raise ConfigError(
            f"structural pruning changes layer shapes, but layers {wrapped} hold "
            "torch.nn.utils.parametrize parametrizations, which it cannot resize; remove them "
            "first (parametrize.remove_parametrizations)"
        )


def preflight(model: nn.Module, extra_supported: Iterable[type[nn.Module]] = ()) -> None:
    """Raise ConfigError naming the first layer the channel-pruning engine cannot handle.

    Rules: no layer carries a pruning mask or parametrization (:func:`refuse_masks`); every
    module holding its own parameters or buffers must be one of Conv2d / Linear / BatchNorm1d /
    BatchNorm2d / LayerNorm; a Conv2d must have ``groups == 1`` or be depthwise
    (``groups == in_channels == out_channels``).
    """
    refuse_masks(model)
    supported = SUPPORTED + tuple(extra_supported)
    names = [t.__name__ for t in SUPPORTED]
    for name, m in model.named_modules():
        label = name or "<root>"
        if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
            depthwise = m.groups == m.in_channels == m.out_channels
            if m.groups != 1 and not depthwise:
                raise ConfigError(
                    f"layer {label!r} (Conv2d, in={m.in_channels}, out={m.out_channels}, "
                    f"groups={m.groups}) is a grouped conv; structural pruning supports groups == 1 "
                    "or depthwise (groups == in == out) only, because removing channels must keep "
                    "every group the same size. Replace it by a dense or depthwise conv first"
                )
            continue
        if type(m) in supported:
            continue
        if _has_own_state(m):
            own = [n for n, _ in m.named_parameters(recurse=False)]
            own += [n for n, b in m.named_buffers(recurse=False) if b is not None]
            raise ConfigError(
                f"layer {label!r} of type {type(m).__name__} holds its own weights {own}, which the "
                f"channel-pruning engine cannot resize (supported layers with weights: {names}). "
                "Rewrite it with standard layers, or prune a model without it"
            )
