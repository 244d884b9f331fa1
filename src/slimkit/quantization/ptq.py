"""Static post-training int8: fold BN, insert fake-quant layers, calibrate, export a QDQ graph.

``sk.quantize_(model, StaticInt8(observer="mse", calib_samples=256), data=bundle)``:

1. folds every BatchNorm into its conv (:mod:`slimkit.decomposition.fusion`);
2. traces the model with ``torch.fx`` to fuse a ReLU/ReLU6 that directly follows a layer into
   that layer (its output is quantized after the activation, which ORT folds into
   QLinearConv) and to let a layer reuse the output grid of the layer before it when only
   grid-preserving ops (MaxPool, Flatten, Identity) sit between them, so ORT runs those in
   uint8 too;
3. replaces each chosen Conv2d/Linear by :class:`QuantConv2d`/:class:`QuantLinear`, runs
   ``calib_samples`` samples through the model with observers, and freezes the grids;
4. snaps weights and biases onto their int8/int32 grids (the model now simulates ORT's int8).

:func:`export_int8_onnx` writes the int8 ``.onnx``: the fake-quant ops export as
QuantizeLinear/DequantizeLinear; weights are then stored as int8 initializers feeding
DequantizeLinear and biases as int32 (scale ``s_in * s_w``), the QDQ form ONNX Runtime fuses
into QLinearConv / QGemm kernels. Its size is that file's bytes on disk.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from slimkit import atomic
from slimkit.config import (
    SlimConfig,
    check_int,
    check_range,
    parse_enum,
    select_modules,
    set_module,
)
from slimkit.decomposition.fusion import fuse_batchnorm
from slimkit.errors import ConfigError
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.fakequant import QUANT_TYPES, QuantConv2d, QuantLinear, set_state
from slimkit.quantization.observers import UINT8, Observer, ObserverKind, qparams_from_range

# Ops that pass values through unchanged (a subset of their input): the grid is preserved.
_TRANSPARENT_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_TRANSPARENT_CALLS = {"flatten", "view", "reshape", "contiguous"}


@dataclasses.dataclass(frozen=True)
class StaticInt8(SlimConfig):
    """Static int8 PTQ: uint8 activations calibrated by ``observer``, int8 per-channel weights.

    ``calib_samples`` samples are taken from ``data`` (a DataBundle's ``calib`` loader, a
    DataLoader or a tensor); fewer available is an error.
    """

    observer: ObserverKind | str = ObserverKind.MSE
    percentile: float = 99.99  # used by observer="percentile"
    per_channel: bool = True
    calib_samples: int = 256
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        object.__setattr__(self, "observer", parse_enum(ObserverKind, self.observer, "observer"))
        check_range("percentile", self.percentile, 50.0, 100.0, low_open=True)
        check_int("calib_samples", self.calib_samples, 1, 1_000_000)


# ----------------------------------------------------------------------------- graph analysis


def _trace(model: nn.Module):
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models get no fusion/sharing, still correct
        return None


def _plan(
    model: nn.Module, chosen: dict[str, nn.Module]
) -> tuple[dict[str, str], dict[str, str], list[str], set[str]]:
    """``(activation per layer, input_from per layer, activations to drop, output layers)``."""
    graph = _trace(model)
    acts: dict[str, str] = dict.fromkeys(chosen, "none")
    shared: dict[str, str] = {}
    drop: list[str] = []
    outputs: set[str] = set()
    if graph is None:
        return acts, shared, drop, outputs
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def is_mod(node, types) -> bool:
        return node.op == "call_module" and isinstance(modules.get(node.target), types)

    for node in graph.nodes:
        if node.op != "call_module" or node.target not in chosen:
            continue
        # Fuse layer -> (Identity left by BN folding)* -> ReLU/ReLU6 when nothing else reads it.
        cur = node
        while len(cur.users) == 1 and is_mod(next(iter(cur.users)), nn.Identity):
            cur = next(iter(cur.users))
        if len(cur.users) == 1 and calls.get(node.target) == 1:
            nxt = next(iter(cur.users))
            if is_mod(nxt, (nn.ReLU, nn.ReLU6)) and calls[nxt.target] == 1:
                acts[node.target] = "relu6" if isinstance(modules[nxt.target], nn.ReLU6) else "relu"
                drop.append(str(nxt.target))
    # Layers whose output is the model's output keep the full min-max range: clipping logits
    # (what percentile/MSE/entropy may choose) would merge the top classes.
    for node in graph.nodes:
        if node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
            for o in outs:
                while isinstance(o, torch.fx.Node) and o.op == "call_module" and o.target in drop:
                    o = o.args[0]
                if isinstance(o, torch.fx.Node) and o.op == "call_module" and o.target in chosen:
                    outputs.add(str(o.target))
    dropped = set(drop)
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in chosen or not node.args:
            continue
        src = node.args[0]
        while isinstance(src, torch.fx.Node):
            if src.op == "call_module" and src.target in chosen:
                shared[str(node.target)] = str(src.target)
                break
            passthrough = (
                is_mod(src, _TRANSPARENT_MODULES)
                or (src.op == "call_module" and src.target in dropped)
                or (
                    src.op in ("call_method", "call_function")
                    and getattr(src.target, "__name__", str(src.target)) in _TRANSPARENT_CALLS
                )
            )
            if not passthrough or not src.args:
                break
            src = src.args[0]
    return acts, shared, drop, outputs


def prepare_int8(
    model: nn.Module, *, targets=(), ignore=(), per_channel: bool = True
) -> dict[str, nn.Module]:
    """Fold BN and swap chosen Conv2d/Linear layers for fake-quant ones (state ``"float"``)."""
    model.eval()
    if any(isinstance(m, QUANT_TYPES) for m in model.modules()):
        raise ConfigError("the model already holds int8 fake-quant layers; quantize a float model")
    fuse_batchnorm(model, strict=True)  # a BN left after a layer has no int8 form
    chosen = select_modules(model, targets, ignore, (nn.Linear, nn.Conv2d))
    if not chosen:
        raise ConfigError(
            "int8 quantization found no Conv2d/Linear layer to quantize; check targets/ignore"
        )
    acts, shared, drop, outputs = _plan(model, chosen)
    for name in drop:
        set_module(model, name, nn.Identity())
    wrapped: dict[str, nn.Module] = {}
    for name, layer in chosen.items():
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        new = cls.from_float(layer, activation=acts[name], per_channel=per_channel)  # type: ignore[arg-type]
        new.slimkit_quant["int8"]["input_from"] = shared.get(name)
        new.slimkit_quant["int8"]["model_output"] = name in outputs
        new.state = "float"
        set_module(model, name, new)
        wrapped[name] = new
    return wrapped


# ------------------------------------------------------------------------------- calibration


def _batches(data: Any) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    loader = getattr(data, "calib", data)  # a DataBundle gives its calibration loader
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def count_samples(data: Any) -> int:
    return sum(len(x) for x in _batches(data))


@torch.no_grad()
def calibrate(
    model: nn.Module, data: Any, samples: int, observer: ObserverKind, percentile: float = 99.99
) -> None:
    """Run exactly ``samples`` samples through the model with fresh observers on every layer."""
    if data is None:
        raise ConfigError(
            "static int8 needs calibration data: pass data=<DataBundle, DataLoader or tensor>"
        )
    got = count_samples(data)
    if got < samples:
        raise ConfigError(
            f"int8 calibration needs at least calib_samples={samples} samples, but the data "
            f"holds {got}; pass more calibration data or lower calib_samples"
        )
    layers = [m for m in model.modules() if isinstance(m, QUANT_TYPES)]
    for i, m in enumerate(layers):
        m.obs_in = Observer(observer, percentile=percentile, seed=2 * i)
        out_kind = ObserverKind.MINMAX if m.slimkit_quant["int8"].get("model_output") else observer
        m.obs_out = Observer(out_kind, percentile=percentile, seed=2 * i + 1)
    set_state(model, "observe")
    model.eval()
    seen = 0
    for x in _batches(data):
        x = x[: samples - seen]
        model(x)
        seen += len(x)
        if seen >= samples:
            break
    finalize(model)


@torch.no_grad()
def sync_shared(model: nn.Module) -> None:
    """Give each layer with ``input_from`` its producer's output grid (exact pass-through)."""
    names = {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}
    for m in names.values():
        src = m.slimkit_quant["int8"].get("input_from")
        if src in names:  # the input already sits on the producer's output grid
            m.input_scale.copy_(names[src].output_scale)
            m.input_zero_point.copy_(names[src].output_zero_point)


@torch.no_grad()
def finalize(model: nn.Module) -> None:
    """Freeze grids from the observers, share grids across pass-through ops, snap weights."""
    names = {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}
    for m in names.values():
        if m.obs_in is not None:
            s, z = m.obs_in.qparams(*UINT8)
            m.input_scale.fill_(s)
            m.input_zero_point.fill_(z)
        if m.obs_out is not None:
            lo, hi = m.obs_out.observed_range()
            if m.activation != "none":
                lo = 0.0  # after ReLU the grid starts at 0: zero point 0, ORT drops the Relu
            if m.activation == "relu6":
                hi = min(hi, 6.0)
            s, z = qparams_from_range(lo, hi, *UINT8)
            if m.activation == "relu6" and s * UINT8[1] > 6.0:  # keep Clip(0, 6) redundant
                s = float(np.nextafter(np.float32(6.0 / UINT8[1]), np.float32(0)))
            m.output_scale.fill_(s)
            m.output_zero_point.fill_(z)
        m.obs_in = m.obs_out = None
    sync_shared(model)
    for m in names.values():
        m.refresh_weight_qparams()
        m.snap_to_grid()
    set_state(model, "quant")


@QUANTIZERS.register(StaticInt8)
def _static_int8(model: nn.Module, config: StaticInt8, *, data: Any = None, **_: Any) -> nn.Module:
    if data is None:
        raise ConfigError(
            "StaticInt8 needs calibration data: pass --data digits|mnist5k on the CLI, or "
            "quantize_(model, cfg, data=bundle) in Python"
        )
    prepare_and_calibrate(model, config, data, config.percentile)
    return model


def prepare_and_calibrate(
    model: nn.Module, config: Any, data: Any, percentile: float = 99.99
) -> None:
    """Check the calibration count, insert fake-quant layers and calibrate them (PTQ and QAT).

    ``config`` carries ``calib_samples``, ``targets``, ``ignore``, ``per_channel``, ``observer``.
    """
    got = count_samples(data)
    if got < config.calib_samples:
        raise ConfigError(
            f"int8 calibration needs at least calib_samples={config.calib_samples} samples, but "
            f"the data holds {got}; pass more calibration data or lower calib_samples"
        )
    prepare_int8(
        model, targets=config.targets, ignore=config.ignore, per_channel=config.per_channel
    )
    calibrate(model, data, config.calib_samples, ObserverKind(config.observer), percentile)


# ------------------------------------------------------------------------------ ONNX export


@dataclasses.dataclass(frozen=True)
class Int8Export:
    path: str
    bytes: int  # bytes on disk of the .onnx file written
    int8_weights: int  # number of int8/uint8 weight initializers
    int8_weight_bytes: int
    float_weight_bytes: int  # float initializers left (scales, unquantized layers)


def _const_table(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Turn Constant nodes into initializers; return ``{name: array}`` of every constant."""
    g = model.graph
    for node in [n for n in g.node if n.op_type == "Constant"]:
        attr = next((a for a in node.attribute if a.name == "value"), None)
        if attr is None:
            continue
        t = numpy_helper.to_array(attr.t)
        g.initializer.append(numpy_helper.from_array(t, node.output[0]))
        g.node.remove(node)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    # The exporter deduplicates equal buffers (shared grids) through Identity nodes.
    for node in [n for n in g.node if n.op_type == "Identity" and n.input[0] in consts]:
        consts[node.output[0]] = consts[node.input[0]]
        g.initializer.append(numpy_helper.from_array(consts[node.input[0]], node.output[0]))
        g.node.remove(node)
    return consts


def qdq_to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store weights as int8 initializers and biases as int32 DQ inputs (in place).

    ``QuantizeLinear(float initializer)`` is evaluated here: its int8 result becomes an
    initializer read by the DequantizeLinear. A Conv/Gemm bias whose input and weight come from
    DequantizeLinear is stored as int32 with scale ``s_in * s_w``, zero point 0.
    """
    g = model.graph
    consts = _const_table(model)
    producer = {o: n for n in g.node for o in n.output}
    new_inits: list[onnx.TensorProto] = []
    for node in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in consts]:
        x = consts[node.input[0]].astype(np.float32)
        scale = consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel: broadcast along `axis`
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zpb = scale.reshape(shape), zp.reshape(shape).astype(np.int64)
        else:
            zpb = zp.astype(np.int64)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(x / scale) + zpb, info.min, info.max).astype(zp.dtype)
        name = node.input[0] + "_quantized"
        new_inits.append(numpy_helper.from_array(q, name))
        for user in g.node:
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = name
        g.node.remove(node)
    g.initializer.extend(new_inits)
    consts.update({t.name: numpy_helper.to_array(t) for t in new_inits})
    producer = {o: n for n in g.node for o in n.output}
    bias_nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if (
            node.op_type not in ("Conv", "Gemm")
            or len(node.input) < 3
            or node.input[2] not in consts
        ):
            continue
        xdq, wdq = producer.get(node.input[0]), producer.get(node.input[1])
        if (
            xdq is None
            or wdq is None
            or xdq.op_type != "DequantizeLinear"
            or wdq.op_type != "DequantizeLinear"
        ):
            continue
        b = consts[node.input[2]].astype(np.float32)
        s = consts[xdq.input[1]].astype(np.float32) * consts[wdq.input[1]].astype(np.float32)
        s = np.broadcast_to(s, b.shape).astype(np.float32)
        q = np.clip(np.rint(b / s), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2]
        g.initializer.extend(
            [
                numpy_helper.from_array(q, base + "_int32"),
                numpy_helper.from_array(s, base + "_scale"),
            ]
        )
        bias_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [base + "_int32", base + "_scale"],  # zero point omitted: it is 0
                [base + "_dq"],
                name=base + "_DequantizeLinear",
                axis=0,
            )
        )
        node.input[2] = base + "_dq"
    for n in reversed(bias_nodes):
        g.node.insert(0, n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    return model


# Where 8-bit weights are read: (op type, input index) of the int8 kernels and of QDQ.
_WEIGHT_INPUTS = {
    ("DequantizeLinear", 0),
    ("MatMulInteger", 1),
    ("ConvInteger", 1),
    ("DynamicQuantizeLSTM", 1),
    ("DynamicQuantizeLSTM", 2),
}


def compact_names(model: onnx.ModelProto) -> None:
    """Shorten graph-internal names (the exporter's ``/a/b/Conv_output_0`` paths) in place.

    Graph inputs/outputs and int8 weight initializers (named after their torch layer) keep
    their names; node names and doc strings are dropped. On a small CNN the names are a
    large part of the file, so this is what makes the file's bytes approach its weights'.
    """
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    keep |= {i.name for i in g.initializer if i.name.endswith("weight_quantized")}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = format(len(mapping), "x")
        return mapping[name]

    for init in g.initializer:
        init.name = short(init.name)
    for node in g.node:
        node.name = ""
        node.doc_string = ""
        for i, name in enumerate(node.input):
            node.input[i] = short(name)
        for i, name in enumerate(node.output):
            node.output[i] = short(name)
    del g.value_info[:]
    model.doc_string = ""


def onnx_weight_bytes(model: onnx.ModelProto) -> tuple[int, int, int]:
    """``(int8 weight initializers, their bytes, float initializer bytes)``.

    An int8 weight is an 8-bit initializer read as the data input of DequantizeLinear or as
    the weight of an integer kernel (zero points are not counted as weights).
    """
    weights = {
        n.input[i]
        for n in model.graph.node
        for op, i in _WEIGHT_INPUTS
        if n.op_type == op and len(n.input) > i
    }
    n8 = b8 = bf = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype in (np.int8, np.uint8) and init.name in weights:
            n8 += 1
            b8 += arr.nbytes
        elif arr.dtype.kind == "f":
            bf += arr.nbytes
    return n8, b8, bf


def export_int8_onnx(
    model: nn.Module, path: str | os.PathLike[str], example: torch.Tensor, *, opset: int = 17
) -> Int8Export:
    """Write the int8 QDQ ``.onnx`` of a model quantized by StaticInt8/QATInt8/DynamicInt8."""
    from slimkit.export.ort import load_checked

    info = getattr(model, "slimkit_int8", None)
    if isinstance(info, dict) and info.get("mode") == "dynamic":
        from slimkit.quantization.dynamic import export_dynamic_onnx

        return export_dynamic_onnx(model, path, example, opset=opset)
    if not any(isinstance(m, QUANT_TYPES) for m in model.modules()):
        raise ConfigError(
            "export_int8_onnx needs a model quantized with StaticInt8, QATInt8 or DynamicInt8; "
            "this model has no int8 layers"
        )
    from slimkit.export.onnx import export_bytes

    states = {m: m.state for m in model.modules() if isinstance(m, QUANT_TYPES)}
    set_state(model, "quant")
    was_training = model.training
    try:
        proto = onnx.load_from_string(export_bytes(model.eval(), example, opset=opset))
    finally:
        for m, s in states.items():
            m.state = s
        model.train(was_training)
    qdq_to_int8(proto)
    compact_names(proto)
    data = proto.SerializeToString()
    load_checked(data)  # the ONNX checker must accept what we write
    atomic.write_bytes(path, data)
    n8, b8, bf = onnx_weight_bytes(proto)
    return Int8Export(str(Path(path)), len(data), n8, b8, bf)


def output_step(model: nn.Module) -> float:
    """The output grid step of the last fake-quant layer (one quantization step of the logits)."""
    last = [m for m in model.modules() if isinstance(m, QUANT_TYPES)][-1]
    return float(last.output_scale)


@torch.no_grad()
def ort_agreement(
    model: nn.Module,
    onnx_path: str | os.PathLike[str] | bytes,
    x: torch.Tensor,
    step: float | None = None,
) -> tuple[float, float]:
    """``(fraction of outputs within one step, max |diff|)`` of ORT int8 vs the torch model."""
    from slimkit.export.ort import make_session

    sess = make_session(onnx_path, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
    ref = model.eval()(x).numpy()
    step = output_step(model) if step is None else step
    diff = np.abs(got - ref)
    return float((diff <= step * (1 + 1e-4)).mean()), float(diff.max())
