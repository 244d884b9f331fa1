"""Decomposition: every technique module is imported here so the registry is complete."""

from slimkit.decomposition.api import DECOMPOSERS, decompose_
from slimkit.decomposition.base import LayerPlan, Recovery, RecoveryMode, decomposition_plan
from slimkit.decomposition.cp import CPDecomposition
from slimkit.decomposition.depthwise import DepthwiseSeparable
from slimkit.decomposition.fusion import FuseBatchNorm, fuse_batchnorm
from slimkit.decomposition.methods import METHODS, make_config
from slimkit.decomposition.rank import RankRule, RankSpec
from slimkit.decomposition.svd import SVDDecomposition
from slimkit.decomposition.tucker import TuckerDecomposition

__all__ = [
    "CPDecomposition",
    "DECOMPOSERS",
    "DepthwiseSeparable",
    "FuseBatchNorm",
    "METHODS",
    "LayerPlan",
    "RankRule",
    "RankSpec",
    "Recovery",
    "RecoveryMode",
    "SVDDecomposition",
    "TuckerDecomposition",
    "decompose_",
    "decomposition_plan",
    "fuse_batchnorm",
    "make_config",
]
