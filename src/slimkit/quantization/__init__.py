"""Quantization: every technique module is imported here so the registry is complete."""

from slimkit.quantization.api import QUANTIZERS, quantize_
from slimkit.quantization.observers import ObserverKind
from slimkit.quantization.ptq import StaticInt8, export_int8_onnx

__all__ = ["QUANTIZERS", "quantize_"]
__all__ += ["ObserverKind", "StaticInt8", "export_int8_onnx"]
