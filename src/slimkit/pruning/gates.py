"""Learned channel gates: squeeze-excitation style gates rank channels, then are removed.

``sk.prune_(model, GatePruning(ratio=0.5, train={"epochs": 1}), data=bundle)``:

1. a :class:`ChannelGate` is inserted after each targeted layer's BatchNorm (or after the layer
   when no BN reads its output): ``site -> Sequential(site, gate)``;
2. only the gates train (the model's own weights are frozen), on cross-entropy plus
   ``penalty * mean gate value``, so gates of channels the task does not need close;
3. each channel's score is its mean gate value over the calibration data;
4. the gates are removed, the model's original weights and BN statistics restored, and the
   structural engine removes the lowest-scoring channels (global ranking by default: gate values
   share the (0, 1) scale).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import (
    SlimConfig,
    check_int,
    check_range,
    get_module,
    select_modules,
    set_module,
)
from slimkit.errors import ConfigError
from slimkit.models.spec import register_leaf
from slimkit.pruning.activation import _batches
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.criteria import WEIGHT
from slimkit.pruning.preflight import preflight
from slimkit.pruning.slimming import as_train_config
from slimkit.pruning.structured import PRUNABLE, output_layer, prune_channels, resolve_inputs
from slimkit.training import TrainConfig, train


class ChannelGate(nn.Module):
    """x (B, C, *spatial) -> x * g, g = sigmoid(W2 relu(W1 mean_spatial(x))) of shape (B, C, 1, 1)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.fc1 = nn.Linear(channels, hidden)  # (B, C) -> (B, C/r)
        self.fc2 = nn.Linear(hidden, channels)  # (B, C/r) -> (B, C)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 3.0)  # gates start at sigmoid(3) ~ 0.95: near identity
        self.last: torch.Tensor | None = None  # (B, C) gate values of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.flatten(2).mean(2) if x.dim() > 2 else x  # (B, C, H, W) -> (B, C)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(squeeze))))
        self.last = g
        return x * g.reshape(*g.shape, *([1] * (x.dim() - 2)))


register_leaf("ChannelGate", ChannelGate, lambda m: {"channels": m.channels, "hidden": m.hidden})


@dataclasses.dataclass(frozen=True)
class GatePruning(SlimConfig):
    """Rank channels by briefly trained SE-style gates, remove the gates, prune ``ratio``."""

    kind = "structured"

    ratio: float = 0.5
    global_: bool = True
    reduction: int = 4
    penalty: float = 1e-2
    min_channels: int = 1
    max_layer_ratio: float = 0.9
    calib_batches: int = 4
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=1, lr=1e-2))
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        object.__setattr__(self, "train", as_train_config(self.train, "train"))
        check_range("ratio", self.ratio, 0.0, 1.0, high_open=True)
        check_range("penalty", self.penalty, 0.0, 10.0)
        check_range("max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, low_open=True)
        check_int("reduction", self.reduction, 1, 1024)
        check_int("min_channels", self.min_channels, 1, 1_000_000)
        check_int("calib_batches", self.calib_batches, 1, 100_000)


@torch.no_grad()
def gate_sites(model: nn.Module, example: torch.Tensor, layers: list[str]) -> dict[str, str]:
    """layer name -> module after which its gate goes: the BatchNorm whose input is the layer's
    output tensor, else the layer itself."""
    outputs: dict[str, torch.Tensor] = {}
    norm_inputs: list[tuple[str, torch.Tensor]] = []
    hooks = []
    for name, m in model.named_modules():
        if name in layers:
            hooks.append(m.register_forward_hook(lambda _m, _i, o, n=name: outputs.update({n: o})))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(
                m.register_forward_hook(lambda _m, i, _o, n=name: norm_inputs.append((n, i[0])))
            )
    try:
        model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    sites = {}
    for layer in layers:
        site = layer
        for norm, inp in norm_inputs:
            if layer in outputs and inp is outputs[layer]:
                site = norm
                break
        sites[layer] = site
    return sites


def insert_gates(
    model: nn.Module, sites: dict[str, str], channels: dict[str, int], reduction: int
) -> dict[str, tuple[str, nn.Module, ChannelGate]]:
    """Wrap each site as ``Sequential(site, gate)``; returns layer -> (site, original, gate)."""
    inserted: dict[str, tuple[str, nn.Module, ChannelGate]] = {}
    for layer, site in sites.items():
        original = get_module(model, site)
        c = channels[layer]
        gate = ChannelGate(c, max(1, c // reduction))
        set_module(model, site, nn.Sequential(original, gate))
        inserted[layer] = (site, original, gate)
    return inserted


def remove_gates(model: nn.Module, inserted: dict[str, tuple[str, nn.Module, ChannelGate]]) -> None:
    for site, original, _gate in inserted.values():
        set_module(model, site, original)


@torch.no_grad()
def mean_gate_scores(
    model: nn.Module, gates: dict[str, ChannelGate], loader: Any, max_batches: int
) -> dict[str, torch.Tensor]:
    """Mean gate value per channel over the calibration batches: layer -> (C,)."""
    sums: dict[str, torch.Tensor] = {}
    n = 0
    model.eval()
    for x, _y in _batches(loader, max_batches):
        model(x)
        for layer, gate in gates.items():
            assert gate.last is not None
            s = gate.last.sum(0)
            sums[layer] = sums[layer] + s if layer in sums else s
        n += int(x.shape[0])
    if n == 0:
        raise ConfigError("gate scores need at least one calibration batch, but data had none")
    return {k: v / n for k, v in sums.items()}


@PRUNERS.register(GatePruning)
def _gate_pruning(
    model: nn.Module,
    config: GatePruning,
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
    **_: Any,
) -> nn.Module:
    if not hasattr(data, "train"):
        raise ConfigError(
            "GatePruning trains channel gates, so it needs data=<DataBundle> with train and calib "
            f"loaders, but got {type(data).__name__}"
        )
    example, loader = resolve_inputs(model, data, example_inputs)
    preflight(model)
    classifier = output_layer(model, example)
    layers = [
        n for n in select_modules(model, config.targets, config.ignore, PRUNABLE) if n != classifier
    ]
    channels = {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if n in layers and isinstance(m, PRUNABLE)
    }
    sites = gate_sites(model, example, layers)
    # Snapshot weights + BN statistics and trainability: the gates are a scoring device only.
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    inserted = insert_gates(model, sites, channels, config.reduction)
    gates = {layer: g for layer, (_s, _o, g) in inserted.items()}
    try:

        def loss_fn(
            m: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
        ) -> torch.Tensor:
            opened = torch.stack([g.last.mean() for g in gates.values() if g.last is not None])
            return F.cross_entropy(logits, y) + config.penalty * opened.mean()

        train(model, data, config.train, loss_fn=loss_fn, description="gates")
        scores = mean_gate_scores(model, gates, loader, config.calib_batches)
    finally:
        remove_gates(model, inserted)
        model.load_state_dict(saved)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
        model.train(was_training)
    prune_channels(
        model,
        ratio=config.ratio,
        global_=config.global_,
        min_channels=config.min_channels,
        max_layer_ratio=config.max_layer_ratio,
        targets=config.targets,
        ignore=config.ignore,
        example_inputs=example,
        scores=scores,
        score_kinds=(WEIGHT,),
        normalize=False,
    )
    return model
