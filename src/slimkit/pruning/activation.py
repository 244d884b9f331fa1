"""Per-channel activation statistics collected with forward hooks, keyed by layer name.

A layer's *activation site* is the module whose output is what the next layer sees: the
activation function (ReLU, ReLU6, ...) that directly consumes the layer's output, or the layer
itself when nothing does (e.g. MobileNetV2's linear bottleneck, or a BN feeding a residual add).
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
from collections.abc import Iterable
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


def collect_stats(
    model: nn.Module,
    loader: Any,
    sites: Iterable[str],
    *,
    max_batches: int = 4,
    taylor: bool = False,
) -> dict[str, ChannelStats]:
    """Run ``loader`` (batches ``(x, y)``) through ``model`` and return stats per site name.

    With ``taylor=True`` each batch is also back-propagated through cross-entropy on ``y``
    (parameters' ``.grad`` are left as they were before the call).
    """
    names = sorted(set(sites))
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ConfigError(f"activation sites {missing} are not layers of the model")
    sums: dict[str, dict[str, torch.Tensor]] = {}
    count = {"samples": 0}
    pending: list[tuple[str, torch.Tensor]] = []
    hooks = []

    def add(name: str, key: str, value: torch.Tensor) -> None:
        slot = sums.setdefault(name, {})
        slot[key] = slot[key] + value if key in slot else value

    def make(name: str):
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            a = _first_tensor(out)
            if a is None or a.dim() < 2:
                return
            d = a.detach().float()
            # (B, C, *spatial) -> (B, C, P): statistics per channel over batch and positions.
            flat = d.reshape(d.shape[0], d.shape[1], -1)
            add(name, "abs", flat.abs().mean(2).sum(0))
            add(name, "zero", (flat <= 0).float().mean(2).sum(0))
            if taylor and a.requires_grad:
                pending.append((name, a))
                a.retain_grad()

        return hook

    for n in names:
        hooks.append(modules[n].register_forward_hook(make(n)))
    was_training = model.training
    saved_grads = {id(p): p.grad for p in model.parameters()}
    model.eval()
    try:
        for x, y in _batches(loader, max_batches):
            pending.clear()
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
                    t = prod.reshape(prod.shape[0], prod.shape[1], -1).mean(2).abs().sum(0)
                    add(name, "taylor", t)
            else:
                with torch.no_grad():
                    model(x)
            count["samples"] += int(x.shape[0])
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.grad = saved_grads.get(id(p))
        model.train(was_training)
    total = count["samples"]
    if total == 0:
        raise ConfigError("activation statistics need at least one batch of data, but got 0")
    out: dict[str, ChannelStats] = {}
    for name, slot in sums.items():
        out[name] = ChannelStats(
            mean_abs=slot["abs"] / total,
            apoz=slot["zero"] / total,
            taylor=slot["taylor"] / total if "taylor" in slot else None,
            samples=total,
        )
    return out
