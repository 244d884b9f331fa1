"""Pruning: every technique module is imported here so the registry is complete."""

from slimkit.pruning.api import PRUNERS, prune_
from slimkit.pruning.criteria import Criterion
from slimkit.pruning.gates import ChannelGate, GatePruning
from slimkit.pruning.magnitude import MagnitudePruning
from slimkit.pruning.masks import (
    Scope,
    apply_masks,
    attach_masks,
    finalize_,
    get_masks,
    reapply_masks,
)
from slimkit.pruning.preflight import preflight
from slimkit.pruning.random import RandomPruning
from slimkit.pruning.schedules import GradualPruning, ScheduleKind, agp_sparsity, schedule_values
from slimkit.pruning.sensitivity import SensitivityTable, sensitivity_scan
from slimkit.pruning.slimming import NetworkSlimming, bn_l1_loss
from slimkit.pruning.sparse_storage import (
    SparseEncoding,
    choose_encoding,
    decode_sparse,
    encode_sparse,
)
from slimkit.pruning.structured import (
    ChannelPruning,
    RoundMode,
    ScoreScope,
    StructuredResult,
    prune_channels,
)
from slimkit.pruning.taylor import TaylorPruning, taylor_scores

__all__ = ["PRUNERS", "prune_"]
__all__ += [
    "GradualPruning",
    "MagnitudePruning",
    "RandomPruning",
    "ScheduleKind",
    "Scope",
    "SensitivityTable",
    "SparseEncoding",
    "TaylorPruning",
    "agp_sparsity",
    "apply_masks",
    "attach_masks",
    "choose_encoding",
    "decode_sparse",
    "encode_sparse",
    "finalize_",
    "get_masks",
    "reapply_masks",
    "schedule_values",
    "sensitivity_scan",
    "taylor_scores",
]
__all__ += [
    "ChannelGate",
    "ChannelPruning",
    "Criterion",
    "GatePruning",
    "NetworkSlimming",
    "RoundMode",
    "ScoreScope",
    "StructuredResult",
    "bn_l1_loss",
    "preflight",
    "prune_channels",
]
