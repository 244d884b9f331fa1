"""Pruning: every technique module is imported here so the registry is complete."""

from slimkit.pruning.api import PRUNERS, prune_
from slimkit.pruning.criteria import Criterion
from slimkit.pruning.gates import ChannelGate, GatePruning
from slimkit.pruning.preflight import preflight
from slimkit.pruning.slimming import NetworkSlimming, bn_l1_loss
from slimkit.pruning.structured import ChannelPruning, StructuredResult, prune_channels

__all__ = ["PRUNERS", "prune_"]
__all__ += [
    "ChannelGate", "ChannelPruning", "Criterion", "GatePruning", "NetworkSlimming",
    "StructuredResult", "bn_l1_loss", "preflight", "prune_channels",
]
