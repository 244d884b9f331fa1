"""YAML/CLI boundary: method name -> config class (``{method: kmeans, bits: 4}``).

Quant-B adds its int8 entries ("int8-dynamic", "int8-static", "qat") here.
"""

from __future__ import annotations

from typing import Any

from slimkit.config import SlimConfig
from slimkit.errors import ConfigError
from slimkit.quantization.dynamic import DynamicInt8
from slimkit.quantization.halfprec import BFloat16Weights, Float16Weights
from slimkit.quantization.kmeans import KMeansQuantization
from slimkit.quantization.linear import LinearQuantization
from slimkit.quantization.log2 import Log2Quantization
from slimkit.quantization.mixed import MixedPrecision
from slimkit.quantization.ptq import StaticInt8
from slimkit.quantization.qat import QATInt8

METHODS: dict[str, type[SlimConfig]] = {
    "linear": LinearQuantization,
    "log2": Log2Quantization,
    "kmeans": KMeansQuantization,
    "fp16": Float16Weights,
    "bf16": BFloat16Weights,
    "mixed": MixedPrecision,
    "int8-dynamic": DynamicInt8,
    "int8-static": StaticInt8,
    "qat": QATInt8,
}


def method_config(method: str, options: dict[str, Any] | None = None) -> SlimConfig:
    """Build the config of ``method`` from YAML/CLI options; a typo lists the valid names."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {sorted(METHODS)}, but got {method!r}")
    return METHODS[method].from_dict(dict(options or {}))
