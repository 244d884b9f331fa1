"""Quantization: every technique module is imported here so the registry is complete."""

from slimkit.quantization.api import QUANTIZERS, quantize_
from slimkit.quantization.codes import QuantCodes, dequantize, quantized_layers, weight_codes
from slimkit.quantization.dynamic import DynamicInt8
from slimkit.quantization.halfprec import BFloat16Weights, Float16Weights, HalfDtype, HalfPrecision
from slimkit.quantization.kmeans import KMeansQuantization, finetune_centroids
from slimkit.quantization.linear import LinearQuantization
from slimkit.quantization.log2 import Log2Quantization
from slimkit.quantization.methods import METHODS, method_config
from slimkit.quantization.mixed import (
    MixedPlan,
    MixedPrecision,
    MixedScheme,
    SensitivityMetric,
    apply_mixed_plan,
    plan_mixed_precision,
)
from slimkit.quantization.observers import ObserverKind
from slimkit.quantization.packing import pack, unpack
from slimkit.quantization.ptq import StaticInt8, export_int8_onnx
from slimkit.quantization.qat import QATInt8

__all__ = ["QUANTIZERS", "quantize_"]
__all__ += ["DynamicInt8", "ObserverKind", "QATInt8", "StaticInt8", "export_int8_onnx"]
__all__ += [
    "BFloat16Weights",
    "Float16Weights",
    "HalfDtype",
    "HalfPrecision",
    "KMeansQuantization",
    "LinearQuantization",
    "Log2Quantization",
    "METHODS",
    "MixedPlan",
    "MixedPrecision",
    "MixedScheme",
    "QuantCodes",
    "SensitivityMetric",
    "apply_mixed_plan",
    "dequantize",
    "finetune_centroids",
    "method_config",
    "pack",
    "plan_mixed_precision",
    "quantized_layers",
    "unpack",
    "weight_codes",
]
