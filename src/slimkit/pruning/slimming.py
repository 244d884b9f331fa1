"""Network slimming (Liu et al. 2017): L1 on BatchNorm gammas while training, then remove the
channels with the smallest |gamma| under one global threshold.

``sk.prune_(model, NetworkSlimming(ratio=0.5, penalty=1e-4, train={"epochs": 3}), data=bundle)``
trains with ``cross_entropy + penalty * sum_l ||gamma_l||_1`` (``bn_l1_loss``, a ``loss_fn`` for
:func:`slimkit.training.train`), then removes ``ratio`` of the targeted channels ranked by raw
|gamma| across all layers (gammas are comparable after the shared penalty), at most
``max_layer_ratio`` of any layer, through the structural engine of
:mod:`slimkit.pruning.structured`. With ``train.epochs == 0`` it is a pure prune step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import SlimConfig, check_int, check_range
from slimkit.errors import ConfigError
from slimkit.pruning.api import PRUNERS
from slimkit.pruning.criteria import Criterion
from slimkit.pruning.structured import prune_channels
from slimkit.training import LossFn, TrainConfig, train


def bn_l1_loss(penalty: float, base: LossFn | None = None) -> LossFn:
    """``loss_fn`` for ``train``: base loss (cross-entropy) + penalty * sum of |gamma| of every BN."""
    check_range("penalty", penalty, 0.0, 1.0)

    def loss_fn(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        loss = base(model, x, y, logits) if base is not None else F.cross_entropy(logits, y)
        gammas = [
            m.weight.abs().sum()
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        ]
        return loss + penalty * torch.stack(gammas).sum() if gammas else loss

    return loss_fn


def as_train_config(value: Any, field: str) -> TrainConfig:
    """Accept a TrainConfig or its dict form (from YAML)."""
    if isinstance(value, TrainConfig):
        return value
    if isinstance(value, dict):
        return TrainConfig.from_dict(value)
    raise ConfigError(
        f"{field} must be a TrainConfig or a mapping of its options, but got {value!r}"
    )


@dataclasses.dataclass(frozen=True)
class NetworkSlimming(SlimConfig):
    """Train with L1 on BN gammas, then remove ``ratio`` of channels by global |gamma|."""

    kind = "structured"

    ratio: float = 0.5
    penalty: float = 1e-4
    max_layer_ratio: float = 0.8
    min_channels: int = 1
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=0))
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        object.__setattr__(self, "train", as_train_config(self.train, "train"))
        check_range("ratio", self.ratio, 0.0, 1.0, high_open=True)
        check_range("penalty", self.penalty, 0.0, 1.0)
        check_range("max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, low_open=True)
        check_int("min_channels", self.min_channels, 1, 1_000_000)


@PRUNERS.register(NetworkSlimming)
def _network_slimming(
    model: nn.Module,
    config: NetworkSlimming,
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
    **_: Any,
) -> nn.Module:
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            "NetworkSlimming ranks channels by their BatchNorm scale (gamma), but the model has "
            "no BatchNorm layer; use ChannelPruning (method channel) with criterion l1 instead"
        )
    # Targets and the graph's supported layers are checked before the L1 training, which
    # changes the model in place (a typo in targets was reported after the epochs).
    from slimkit.config import select_modules
    from slimkit.pruning.preflight import preflight
    from slimkit.pruning.structured import PRUNABLE

    select_modules(model, config.targets, config.ignore, PRUNABLE)
    preflight(model)
    if config.train.epochs > 0:
        if not hasattr(data, "train"):
            raise ConfigError(
                f"NetworkSlimming trains for {config.train.epochs} epoch(s) with L1 on BN gammas, "
                "so it needs data=<DataBundle>; pass one, or set train={'epochs': 0} to prune only"
            )
        train(model, data, config.train, loss_fn=bn_l1_loss(config.penalty), description="slimming")
    prune_channels(
        model,
        ratio=config.ratio,
        criterion=Criterion.BN_SCALE,
        global_=True,
        min_channels=config.min_channels,
        max_layer_ratio=config.max_layer_ratio,
        targets=config.targets,
        ignore=config.ignore,
        data=data,
        example_inputs=example_inputs,
        normalize=False,
    )
    return model
