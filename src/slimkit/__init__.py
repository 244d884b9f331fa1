"""slimkit: make PyTorch models really smaller and really faster for CPU and edge, and prove it.

The public API is curated here; technique families are imported lazily so ``import slimkit``
stays fast (see ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import Any

from slimkit.errors import (
    ConfigError,
    MissingExtraError,
    NumericsError,
    ParityError,
    SlimkitError,
    TargetError,
    UnsafeFileError,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first access.
_LAZY: dict[str, str] = {
    "load": "slimkit.io",
    "save": "slimkit.io",
    "build_model": "slimkit.models",
    "load_dataset": "slimkit.data",
    "from_tensors": "slimkit.data",
    "train": "slimkit.training",
    "TrainConfig": "slimkit.training",
    "evaluate": "slimkit.metrics",
    "evaluate_accuracy": "slimkit.training",
    "export": "slimkit.export",
    "metrics": "slimkit.metrics",
    "models": "slimkit.models",
    "data": "slimkit.data",
    "quantize_": "slimkit.quantization",
    "LinearQuantization": "slimkit.quantization",
    "Log2Quantization": "slimkit.quantization",
    "KMeansQuantization": "slimkit.quantization",
    "HalfPrecision": "slimkit.quantization",
    "Float16Weights": "slimkit.quantization",
    "BFloat16Weights": "slimkit.quantization",
    "MixedPrecision": "slimkit.quantization",
    "finetune_centroids": "slimkit.quantization",
    "StaticInt8": "slimkit.quantization",
    "QATInt8": "slimkit.quantization",
    "DynamicInt8": "slimkit.quantization",
    "export_int8_onnx": "slimkit.quantization",
    "prune_": "slimkit.pruning",
    "ChannelPruning": "slimkit.pruning",
    "NetworkSlimming": "slimkit.pruning",
    "GatePruning": "slimkit.pruning",
    "MagnitudePruning": "slimkit.pruning",
    "RandomPruning": "slimkit.pruning",
    "TaylorPruning": "slimkit.pruning",
    "GradualPruning": "slimkit.pruning",
    "finalize_": "slimkit.pruning",
    "decompose_": "slimkit.decomposition",
    "FuseBatchNorm": "slimkit.decomposition",
    "SVDDecomposition": "slimkit.decomposition",
    "TuckerDecomposition": "slimkit.decomposition",
    "CPDecomposition": "slimkit.decomposition",
    "DepthwiseSeparable": "slimkit.decomposition",
    "RankSpec": "slimkit.decomposition",
    "Recovery": "slimkit.decomposition",
    "SplitConfig": "slimkit.decomposition",
    "export_split": "slimkit.decomposition",
    "quantization": "slimkit.quantization",
    "pruning": "slimkit.pruning",
    "decomposition": "slimkit.decomposition",
    "distillation": "slimkit.distillation",
    "distill": "slimkit.distillation",
    "DistillConfig": "slimkit.distillation",
    "search": "slimkit.search",
    "pipeline": "slimkit.pipeline",
    "compress": "slimkit.pipeline",
    "load_recipe": "slimkit.pipeline",
    "transformers": "slimkit.transformers",
}

__all__ = [
    "ConfigError",
    "MissingExtraError",
    "NumericsError",
    "ParityError",
    "SlimkitError",
    "TargetError",
    "UnsafeFileError",
    "__version__",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"slimkit.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
