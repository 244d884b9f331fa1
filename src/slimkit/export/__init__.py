"""Export: ONNX (+ parity), ONNX Runtime sessions, and the compact .slim artifact."""

from slimkit.export import onnx as onnx_export
from slimkit.export.onnx import ExportResult, to_onnx
from slimkit.export.ort import make_session

__all__ = ["ExportResult", "make_session", "onnx_export", "to_onnx"]
