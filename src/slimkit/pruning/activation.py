"""Per-channel activation statistics collected with forward hooks, keyed by layer name.

A layer's *activation site* is the module whose output is what the next layer sees: the
activation function (ReLU, ReLU6, ...) that directly consumes the layer's output, or the layer
itself when nothing does (e.g. MobileNetV2's linear bottleneck, or a BN feeding a residual add).
One activation module may be the site of several layers (torchvision's shared ``self.relu``):
each call counts for the layer whose output tensor it received, so statistics stay per layer.
Channels are dim 1 of a Conv2d/BatchNorm output and the last dim of a Linear/LayerNorm output
(tokens ``(B, T, C)``).
Statistics over a calibration loader, per output channel ``c`` of a site output ``a``:

- ``mean_abs[c]`` = mean over samples and positions of ``|a|`` (Hu et al. 2016 "network trimming"
  use the mean activation; for a post-ReLU site this is the mean activation);
- ``apoz[c]``     = fraction of values ``<= 0`` (Average Percentage of Zeros after a ReLU; for a
  site without ReLU, the fraction a ReLU would zero);
- ``taylor[c]``   = mean over samples of ``|mean_{h,w}(a * dL/da)|`` (Molchanov et al. 2017,
  first-order Taylor change of the loss when the channel is removed), with cross-entropy loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
)


@dataclasses.dataclass
class ChannelStats:
    """Per-channel statistics of one site output, each of shape (C,)."""

    mean_abs: torch.Tensor
    apoz: torch.Tensor
    taylor: torch.Tensor | None
    samples: int


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


@torch.no_grad()
def activation_sites(
    model: nn.Module, example: torch.Tensor, layers: Iterable[str]
) -> dict[str, str]:
    """Map each layer name to the name of its activation site (see module docstring).

    One forward pass records every leaf module's input and output tensors; an activation module
    whose input *is* the layer's output tensor is that layer's site.
    """
    leaves = {n: m for n, m in model.named_modules() if not list(m.children())}
    outputs: dict[str, torch.Tensor] = {}
    act_inputs: list[tuple[str, torch.Tensor]] = []
    hooks = []

    def make(name: str, is_act: bool):
        def hook(_m: nn.Module, inp: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None:
                outputs[name] = t  # keep a reference: identity comparison below
            i = _first_tensor(inp)
            if is_act and i is not None:
                act_inputs.append((name, i))

        return hook

    for n, m in leaves.items():
        hooks.append(m.register_forward_hook(make(n, isinstance(m, ACTIVATIONS))))
    was_training = model.training
    try:
        model.eval()(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    sites: dict[str, str] = {}
    for layer in layers:
        out = outputs.get(layer)
        site = layer
        if out is not None:
            for act_name, act_in in act_inputs:
                if act_in is out:
                    site = act_name
                    break
        sites[layer] = site
    return sites


def _batches(loader: Any, max_batches: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        if isinstance(batch, (tuple, list)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


def feature_axis(layer: nn.Module) -> int:
    """Axis of a layer's output that holds its channels: -1 for Linear/LayerNorm, else 1.

    A Linear or LayerNorm applied to tokens (B, T, C) keeps its features last; a Conv2d or
    BatchNorm output (B, C, *spatial) has them at dim 1.
    """
    return -1 if isinstance(layer, (nn.Linear, nn.LayerNorm)) else 1


def _per_channel(t: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, ..., C, ...) -> (B, C, P): channels at dim 1, every other non-batch dim flattened."""
    if axis != 1 and t.dim() > 2:
        t = t.movedim(axis, 1)
    return t.reshape(t.shape[0], t.shape[1], -1)


def collect_stats(
    model: nn.Module,
    loader: Any,
    sites: Mapping[str, str] | Iterable[str],
    *,
    max_batches: int = 4,
    taylor: bool = False,
) -> dict[str, ChannelStats]:
    """Run ``loader`` (batches ``(x, y)``) through ``model`` and return stats per layer name.

    ``sites`` maps a layer name to its activation site (:func:`activation_sites`); a plain
    list of names means each module is its own site. A site module called on several tensors
    per forward (one ``self.relu`` shared by two convs) contributes, for each layer, only the
    calls whose input *is* that layer's output tensor, so each layer gets its own statistics.
    With ``taylor=True`` each batch is also back-propagated through cross-entropy on ``y``
    (parameters' ``.grad`` are left as they were before the call).
    """
    site_of = dict(sites) if isinstance(sites, Mapping) else {n: n for n in sites}
    modules = dict(model.named_modules())
    missing = sorted({n for pair in site_of.items() for n in pair if n not in modules})
    if missing:
        raise ConfigError(f"activation sites {missing} are not layers of the model")
    axis = {layer: feature_axis(modules[layer]) for layer in site_of}
    # site name -> layers it reports: ``own`` when the site is the layer, else matched by input
    own: dict[str, list[str]] = {}
    matched: dict[str, list[str]] = {}
    for layer, site in site_of.items():
        (own if site == layer else matched).setdefault(site, []).append(layer)
    producers = {layer for layers in matched.values() for layer in layers}
    last_output: dict[str, torch.Tensor] = {}  # this forward's output of each producer
    sums: dict[str, dict[str, torch.Tensor]] = {}
    seen: dict[str, int] = {}  # samples attributed per layer (a layer may run twice)
    count = {"samples": 0}
    pending: list[tuple[str, torch.Tensor]] = []
    hooks = []

    def add(name: str, key: str, value: torch.Tensor) -> None:
        slot = sums.setdefault(name, {})
        slot[key] = slot[key] + value if key in slot else value

    def record(layer: str, a: torch.Tensor) -> None:
        if a.dim() < 2:
            return
        flat = _per_channel(a.detach().float(), axis[layer])  # (B, C, P)
        add(layer, "abs", flat.abs().mean(2).sum(0))
        add(layer, "zero", (flat <= 0).float().mean(2).sum(0))
        seen[layer] = seen.get(layer, 0) + int(a.shape[0])
        if taylor and a.requires_grad:
            pending.append((layer, a))
            a.retain_grad()

    def make(name: str):
        def hook(_m: nn.Module, inp: Any, out: Any) -> None:
            a = _first_tensor(out)
            if a is None:
                return
            i = _first_tensor(inp)
            for layer in matched.get(name, ()):
                if i is not None and i is last_output.get(layer):
                    record(layer, a)
            for layer in own.get(name, ()):
                record(layer, a)
            if name in producers:
                last_output[name] = a  # after matching: a module never consumes its own output

        return hook

    for n in sorted(set(own) | set(matched) | producers):
        hooks.append(modules[n].register_forward_hook(make(n)))
    was_training = model.training
    saved_grads = {id(p): p.grad for p in model.parameters()}
    model.eval()
    try:
        for x, y in _batches(loader, max_batches):
            pending.clear()
            last_output.clear()
            if taylor:
                if y is None:
                    raise ConfigError("criterion 'taylor' needs labelled batches (x, y) in data")
                with torch.enable_grad():
                    logits = model(x.detach().requires_grad_(True))
                    loss = F.cross_entropy(logits, y, reduction="sum")
                    loss.backward()
                for name, a in pending:
                    if a.grad is None:
                        continue
                    prod = (a.detach() * a.grad).float()
                    # (B, C, P) -> (B, C): |mean over positions of a * dL/da| per sample
                    t = _per_channel(prod, axis[name]).mean(2).abs().sum(0)
                    add(name, "taylor", t)
            else:
                with torch.no_grad():
                    model(x)
            count["samples"] += int(x.shape[0])
    finally:
        for h in hooks:
            h.remove()
        last_output.clear()
        for p in model.parameters():
            p.grad = saved_grads.get(id(p))
        model.train(was_training)
    total = count["samples"]
    if total == 0:
        raise ConfigError("activation statistics need at least one batch of data, but got 0")
    out: dict[str, ChannelStats] = {}
    for name, slot in sums.items():
        calls = seen[name]
        out[name] = ChannelStats(
            mean_abs=slot["abs"] / calls,
            apoz=slot["zero"] / calls,
            taylor=slot["taylor"] / calls if "taylor" in slot else None,
            samples=total,
        )
    return out
