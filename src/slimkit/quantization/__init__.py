"""Quantization: every technique module is imported here so the registry is complete."""

from slimkit.quantization.api import QUANTIZERS, quantize_
from slimkit.quantization.dynamic import DynamicInt8
from slimkit.quantization.observers import ObserverKind
from slimkit.quantization.ptq import StaticInt8, export_int8_onnx
from slimkit.quantization.qat import QATInt8

__all__ = ["QUANTIZERS", "quantize_"]
__all__ += ["DynamicInt8", "ObserverKind", "QATInt8", "StaticInt8", "export_int8_onnx"]
