"""Quantization: every technique module is imported here so the registry is complete."""

from slimkit.quantization.api import QUANTIZERS, quantize_

__all__ = ["QUANTIZERS", "quantize_"]
