"""YAML/CLI boundary: pruning method name -> config class (``Config.from_dict(options)``).

The structured-pruning engineer adds their names here too.
"""

from __future__ import annotations

from slimkit.config import SlimConfig
from slimkit.pruning.gates import GatePruning
from slimkit.pruning.magnitude import MagnitudePruning
from slimkit.pruning.random import RandomPruning
from slimkit.pruning.schedules import GradualPruning
from slimkit.pruning.slimming import NetworkSlimming
from slimkit.pruning.structured import ChannelPruning
from slimkit.pruning.taylor import TaylorPruning

METHODS: dict[str, type[SlimConfig]] = {
    "magnitude": MagnitudePruning,
    "random": RandomPruning,
    "taylor": TaylorPruning,
    "gradual": GradualPruning,
    "channel": ChannelPruning,
    "slimming": NetworkSlimming,
    "gates": GatePruning,
}
