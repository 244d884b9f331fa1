"""Measurement: size, FLOPs, latency, accuracy, fidelity, and the per-stage report row."""

from slimkit.metrics.fidelity import Fidelity, compare_outputs, model_fidelity, sqnr_db
from slimkit.metrics.flops import count_flops, count_macs, flops_by_module
from slimkit.metrics.latency import Latency, ort_latency, torch_latency
from slimkit.metrics.report import Measurement, evaluate
from slimkit.metrics.size import count_nonzeros, count_params, dense_fp32_bytes, file_bytes

__all__ = [
    "Fidelity",
    "Latency",
    "Measurement",
    "compare_outputs",
    "count_flops",
    "count_macs",
    "count_nonzeros",
    "count_params",
    "dense_fp32_bytes",
    "evaluate",
    "file_bytes",
    "flops_by_module",
    "model_fidelity",
    "ort_latency",
    "sqnr_db",
    "torch_latency",
]
