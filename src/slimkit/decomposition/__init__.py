"""Decomposition: every technique module is imported here so the registry is complete."""

from slimkit.decomposition.api import DECOMPOSERS, decompose_
from slimkit.decomposition.base import LayerPlan, Recovery, RecoveryMode, decomposition_plan
from slimkit.decomposition.cp import CPDecomposition
from slimkit.decomposition.depthwise import DepthwiseSeparable
from slimkit.decomposition.fusion import FuseBatchNorm, fuse_batchnorm
from slimkit.decomposition.methods import METHODS, make_config
from slimkit.decomposition.rank import RankRule, RankSpec
from slimkit.decomposition.report import BeforeAfter, before_after
from slimkit.decomposition.split import (
    CutPoint,
    SplitConfig,
    SplitPlan,
    SplitResult,
    cut_points,
    export_split,
    plan_split,
    split_model,
)
from slimkit.decomposition.svd import SVDDecomposition
from slimkit.decomposition.tucker import TuckerDecomposition

__all__ = [
    "BeforeAfter",
    "CPDecomposition",
    "CutPoint",
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
    "SplitConfig",
    "SplitPlan",
    "SplitResult",
    "TuckerDecomposition",
    "before_after",
    "cut_points",
    "decompose_",
    "decomposition_plan",
    "export_split",
    "fuse_batchnorm",
    "make_config",
    "plan_split",
    "split_model",
]
