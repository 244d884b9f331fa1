"""Dynamic int8 (Linear, LSTM): int8 weights, activations quantized per batch at run time.

``sk.quantize_(model, DynamicInt8(ignore=["fc3"]))`` rounds the chosen Linear weights onto
their symmetric per-channel int8 grid (``scale = absmax / 127``, the grid ONNX Runtime's
``quantize_dynamic`` uses, so the PyTorch model shows the weight error) and records the plan in
``model.slimkit_int8``. :func:`export_dynamic_onnx` (called by ``ptq.export_int8_onnx``) exports
float ONNX, rewrites ``Gemm`` with a constant weight into ``MatMul + Add`` (ORT's dynamic
quantizer handles MatMul, not Gemm) and runs ``onnxruntime.quantization.quantize_dynamic``
with int8 per-channel weights and the ignored layers excluded: Linear becomes
DynamicQuantizeLinear + MatMulInteger, LSTM becomes DynamicQuantizeLSTM.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from slimkit import atomic
from slimkit.config import SlimConfig, select_modules
from slimkit.errors import ConfigError
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.observers import weight_qparams

DYNAMIC_TYPES = (nn.Linear, nn.LSTM)


@dataclasses.dataclass(frozen=True)
class DynamicInt8(SlimConfig):
    """Dynamic int8 for Linear and LSTM layers (no calibration data needed)."""

    per_channel: bool = True
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@QUANTIZERS.register(DynamicInt8)
def _dynamic_int8(model: nn.Module, config: DynamicInt8, **_: Any) -> nn.Module:
    chosen = select_modules(model, config.targets, config.ignore, DYNAMIC_TYPES)
    if not chosen:
        raise ConfigError(
            "DynamicInt8 found no Linear/LSTM layer to quantize; check targets/ignore"
        )
    every = select_modules(model, (), (), DYNAMIC_TYPES)
    with torch.no_grad():
        for m in chosen.values():
            if isinstance(m, nn.Linear):  # (out, in): one scale per output row
                scale = weight_qparams(m.weight, config.per_channel)[0]
                s = scale.reshape(-1, 1).expand(m.weight.shape[0], 1).clone()  # (out, 1)
                # + 0.0 turns a -0.0 code (a small negative weight) into +0.0, so the weight's
                # bits are what its stored code decodes to (weight_codes checks bit-exactly).
                q = torch.clamp(torch.round(m.weight / s), -127, 127) + 0.0
                m.weight.copy_(q * s)
                # The shared "linear" convention: w = (code - 128) * scale, code in 1..255.
                m.register_buffer("weight_scale", s)
                m.register_buffer("weight_zero_point", torch.full_like(s, 128, dtype=torch.int32))
                m.slimkit_quant = {  # type: ignore[assignment]
                    "weight": {"scheme": "linear", "bits": 8, "symmetric": True, "axis": 0}
                }
    model.slimkit_int8 = {  # type: ignore[assignment]
        "mode": "dynamic",
        "per_channel": config.per_channel,
        "layers": list(chosen),
        "exclude": [n for n in every if n not in chosen],
    }
    return model


def gemm_to_matmul(model: onnx.ModelProto) -> None:
    """Rewrite ``Gemm(A, W, C)`` with constant ``W`` as ``MatMul(A, W^T) + C`` (in place)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for idx, node in reversed(list(enumerate(g.node))):
        if node.op_type != "Gemm" or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or attrs.get("transA", 0)
        ):
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)  # (out, in) -> (in, out) for MatMul
        wname = node.input[1] + "_t"
        g.initializer.append(numpy_helper.from_array(w, wname))
        mm_out = node.output[0] + "_matmul"
        new = [
            helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=node.name + "_MatMul")
        ]
        if len(node.input) > 2 and node.input[2]:
            new.append(
                helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_Add"
                )
            )
        else:
            new[0].output[0] = node.output[0]
        g.node.remove(node)
        for k, n in enumerate(new):
            g.node.insert(idx + k, n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def _excluded_nodes(model: onnx.ModelProto, layers: list[str]) -> list[str]:
    """ONNX nodes of torch layers ``layers``: by weight initializer name or by node scope."""
    out = []
    for node in model.graph.node:
        for layer in layers:
            scope = "/" + layer.replace(".", "/") + "/"
            if any(i.startswith(layer + ".") for i in node.input) or node.name.startswith(scope):
                out.append(node.name)
    return out


def export_dynamic_onnx(
    model: nn.Module, path: str | os.PathLike[str], example: torch.Tensor, *, opset: int = 17
):
    """Export float ONNX and let ORT's ``quantize_dynamic`` make the int8 file at ``path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimkit.export.onnx import export_bytes
    from slimkit.export.ort import load_checked
    from slimkit.quantization.ptq import Int8Export, onnx_weight_bytes

    info = getattr(model, "slimkit_int8", {})
    proto = onnx.load_from_string(export_bytes(model.eval(), example, opset=opset))
    gemm_to_matmul(proto)
    exclude = _excluded_nodes(proto, list(info.get("exclude", [])))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=bool(info.get("per_channel", True)),
            nodes_to_exclude=exclude,
            op_types_to_quantize=["MatMul", "LSTM"],
            extra_options={"MatMulConstBOnly": True},
        )
        data = dst.read_bytes()
    checked = load_checked(data)
    atomic.write_bytes(path, data)
    n8, b8, bf = onnx_weight_bytes(checked)
    return Int8Export(str(Path(path)), len(data), n8, b8, bf)
