"""Search: HPO, NAS (random, regularized evolution, REINFORCE) and auto-compress on Optuna.

Imports optuna lazily (extra ``search``) so ``import slimkit`` stays lean.
"""

from slimkit.search.autocompress import AutoCompressConfig, AutoCompressResult, auto_compress
from slimkit.search.evolution import RegularizedEvolutionSampler
from slimkit.search.hpo import HPOConfig, hpo
from slimkit.search.nas import NASConfig, NASResult, nas
from slimkit.search.pareto import hypervolume_2d, pareto_front
from slimkit.search.reinforce import ReinforceSampler
from slimkit.search.samplers import (
    SamplerBudgetWarning,
    Strategy,
    UnguidedParametersWarning,
    make_sampler,
)
from slimkit.search.spaces import DEFAULT_NAS_SPACE, SearchSpace
from slimkit.search.storage import make_storage, mask_url

__all__ = [
    "AutoCompressConfig",
    "AutoCompressResult",
    "auto_compress",
    "DEFAULT_NAS_SPACE",
    "HPOConfig",
    "NASConfig",
    "NASResult",
    "RegularizedEvolutionSampler",
    "ReinforceSampler",
    "SamplerBudgetWarning",
    "SearchSpace",
    "Strategy",
    "UnguidedParametersWarning",
    "hpo",
    "hypervolume_2d",
    "make_sampler",
    "make_storage",
    "mask_url",
    "nas",
    "pareto_front",
]
