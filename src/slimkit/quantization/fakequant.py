"""Fake-quant int8 layers: Conv2d/Linear that simulate ONNX Runtime's QDQ int8 arithmetic.

``QuantConv2d`` / ``QuantLinear`` subclass the float layers (so targeting by type still works)
and, in their forward, quantize-dequantize

    input   uint8 per-tensor affine      (input_scale, input_zero_point)        0-dim buffers
    weight  int8 symmetric, per channel  (weight_scale)                  (out, 1, ...) buffer
    bias    int32, scale input_scale * weight_scale, zero point 0 (ORT's rule for QLinearConv)
    output  uint8 per-tensor affine after the fused activation (ReLU / ReLU6)

with :class:`_QDQ` (ONNX's exact rounding; straight-through estimator in backward: the
gradient passes unchanged inside the grid's range and is zero outside). Exported to ONNX, those ops become
QuantizeLinear/DequantizeLinear pairs that :mod:`slimkit.quantization.ptq` turns into int8
initializers, so ORT fuses them into QLinearConv / QGemm kernels.

``state`` decides what forward does:

- ``"float"``: plain float layer (before calibration);
- ``"observe"``: float, but input/output observers record ranges (PTQ calibration);
- ``"qat"``: fake-quant with activation ranges tracked by an exponential moving min/max until
  frozen, weight scales following the weights (QAT);
- ``"quant"``: fake-quant with frozen buffers (inference; what a loaded model starts in).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.models.spec import LEAVES, register_leaf
from slimkit.quantization.observers import UINT8, Observer, qparams_from_range, weight_qparams

ACTIVATIONS = ("none", "relu", "relu6")
STATES = ("float", "observe", "qat", "quant")
INT32 = (-(2**31), 2**31 - 1)


class _QDQ(torch.autograd.Function):
    """Quantize-dequantize with ONNX's exact formula ``(clamp(round(x / s) + zp) - zp) * s``.

    ``torch.fake_quantize_*`` multiplies by ``1 / s``, which rounds differently from ONNX
    QuantizeLinear's division on ties (frequent with discrete inputs such as images); this
    function divides, so the PyTorch model and ORT agree. Backward is the straight-through
    estimator: the gradient passes where ``x`` is inside the grid's range, else it is zero.
    """

    @staticmethod
    def forward(ctx, x, scale, zp, qmin: int, qmax: int, axis: int):  # type: ignore[override]
        if scale.dim() == 1:  # per channel along `axis`: (C,) -> broadcastable shape
            shape = [1] * x.dim()
            shape[axis] = -1
            s, z = scale.view(shape), zp.view(shape).to(x.dtype)
        else:
            s, z = scale, zp.to(x.dtype)
        q = torch.round(x / s) + z
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None

    @staticmethod
    def symbolic(g, x, scale, zp, qmin: int, qmax: int, axis: int):
        zp = g.op("Cast", zp, to_i=2 if qmin >= 0 else 3)  # ONNX TensorProto UINT8=2, INT8=3
        kw = {"axis_i": axis} if scale.type().dim() == 1 else {}
        q = g.op("QuantizeLinear", x, scale, zp, **kw)
        return g.op("DequantizeLinear", q, scale, zp, **kw)


def fake_quant_act(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """uint8 per-tensor quantize-dequantize; exports to QuantizeLinear + DequantizeLinear."""
    return _QDQ.apply(x, scale, zp, UINT8[0], UINT8[1], 0)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """int8 per-output-channel quantize-dequantize along axis 0 (values stay in -127..127)."""
    return _QDQ.apply(w, scale, zp, -128, 127, 0)


def fake_quant_bias(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int32 bias on the grid ``scale = s_in * s_w`` (out,), straight-through gradient."""
    q = torch.clamp(torch.round(b / scale), *INT32) * scale
    return b + (q - b).detach()


class _Int8Mixin:
    """Shared state and forward logic of the fake-quant layers (see module docstring)."""

    # Declared loosely: the concrete nn.Conv2d / nn.Linear base defines them.
    weight: Any
    bias: Any
    training: bool
    input_scale: torch.Tensor
    input_zero_point: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    output_scale: torch.Tensor
    output_zero_point: torch.Tensor
    slimkit_quant: dict[str, Any]

    def _init_int8(self, activation: str = "none", per_channel: bool = True) -> None:
        out = self.weight.shape[0]
        reg = self.register_buffer  # type: ignore[attr-defined]
        reg("input_scale", torch.tensor(1.0))  # 0-dim: exports as a scalar QDQ parameter
        reg("input_zero_point", torch.tensor(0, dtype=torch.int32))
        # The shared weight-quantization convention (codes.py, "linear", symmetric 8-bit):
        # w = (code - 128) * scale with code in 1..255, i.e. the int8 value q = code - 128.
        shape = (out,) + (1,) * (self.weight.dim() - 1)
        reg("weight_scale", torch.ones(shape))  # (out, 1, ...)
        reg("weight_zero_point", torch.full(shape, 128, dtype=torch.int32))  # (out, 1, ...)
        reg("output_scale", torch.tensor(1.0))
        reg("output_zero_point", torch.tensor(0, dtype=torch.int32))
        self.slimkit_quant = {
            "weight": {"scheme": "linear", "bits": 8, "symmetric": True, "axis": 0},
            "int8": {"activation": activation, "per_channel": per_channel, "input_from": None},
        }
        self.state = "quant"
        self.ema = 0.01  # QAT moving-average constant for activation ranges
        self.obs_in: Observer | None = None
        self.obs_out: Observer | None = None

    @property
    def activation(self) -> str:
        return str(self.slimkit_quant["int8"]["activation"])

    @property
    def per_channel(self) -> bool:
        return bool(self.slimkit_quant["int8"]["per_channel"])

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return F.relu(y)
        if self.activation == "relu6":
            return F.relu6(y)
        return y

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, which: str) -> None:
        scale = getattr(self, f"{which}_scale")
        zp = getattr(self, f"{which}_zero_point")
        lo, hi = float(x.min()), float(x.max())
        old_lo = (0 - float(zp)) * float(scale)
        old_hi = (UINT8[1] - float(zp)) * float(scale)
        lo = old_lo + self.ema * (lo - old_lo)
        hi = old_hi + self.ema * (hi - old_hi)
        s, z = qparams_from_range(lo, hi, *UINT8)
        scale.fill_(s)
        zp.fill_(z)

    @torch.no_grad()
    def refresh_weight_qparams(self) -> None:
        scale, _ = weight_qparams(self.weight, self.per_channel)
        # Per tensor: one scale repeated per channel, still an (out,) QDQ axis in ONNX.
        self.weight_scale.copy_(
            scale.reshape(-1).expand(self.weight.shape[0]).view_as(self.weight_scale)
        )
        self.weight_zero_point.fill_(128)

    def _wscale(self) -> torch.Tensor:
        return self.weight_scale.reshape(-1)  # (out,)

    def _wq(self) -> torch.Tensor:
        zero = torch.zeros(self.weight.shape[0], dtype=torch.int32)  # int8 zero point (out,)
        return fake_quant_weight(self.weight, self._wscale(), zero)

    def _forward_int8(self, x: torch.Tensor, op) -> torch.Tensor:
        if self.state == "float":
            return self._act(op(x, self.weight, self.bias))
        if self.state == "observe":
            if self.obs_in is not None:
                self.obs_in.observe(x)
            y = self._act(op(x, self.weight, self.bias))
            if self.obs_out is not None:
                self.obs_out.observe(y)
            return y
        qat = self.state == "qat"
        moving = qat and self.training and not self.slimkit_quant["int8"].get("frozen", False)
        if moving and not self.slimkit_quant["int8"].get("input_from"):
            # Shared inputs keep the producer's grid (ptq.sync_shared copies it after a step).
            self._ema_update(x, "input")
        if qat:
            self.refresh_weight_qparams()
        xq = fake_quant_act(x, self.input_scale, self.input_zero_point)
        wq = self._wq()
        b = self.bias
        if b is not None and qat:
            b = fake_quant_bias(b, self.input_scale * self._wscale())
        # In "quant" state the bias was snapped onto its int32 grid by `snap_to_grid`.
        y = self._act(op(xq, wq, b))
        if moving:
            self._ema_update(y.detach(), "output")
        return fake_quant_act(y, self.output_scale, self.output_zero_point)

    @torch.no_grad()
    def snap_to_grid(self) -> None:
        """Store the weight and bias exactly on their int8 / int32 grids (convert step)."""
        self.weight.copy_(self._wq())
        if self.bias is not None:
            s = self.input_scale * self._wscale()  # (out,)
            self.bias.copy_(torch.clamp(torch.round(self.bias / s), *INT32) * s)

    def int8_codes(self) -> torch.Tensor:
        """The int8 weight codes ``round(weight / scale)`` (out, ...) as stored in ONNX."""
        return torch.round(self.weight.detach() / self.weight_scale).to(torch.int8)


class QuantConv2d(_Int8Mixin, nn.Conv2d):
    """A Conv2d simulating QLinearConv (uint8 activations, int8 per-channel weights)."""

    def __init__(
        self, *args: Any, activation: str = "none", per_channel: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_int8(activation, per_channel)

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, activation: str = "none", per_channel: bool = True
    ) -> QuantConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            activation=activation,
            per_channel=per_channel,
        )
        new.load_state_dict(conv.state_dict(), strict=False)
        new.refresh_weight_qparams()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_int8(x, self._conv_forward)


class QuantLinear(_Int8Mixin, nn.Linear):
    """A Linear simulating QGemm (uint8 activations, int8 per-channel weights)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: str = "none",
        per_channel: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_int8(activation, per_channel)

    @classmethod
    def from_float(
        cls, fc: nn.Linear, activation: str = "none", per_channel: bool = True
    ) -> QuantLinear:
        new = cls(
            fc.in_features,
            fc.out_features,
            fc.bias is not None,
            activation=activation,
            per_channel=per_channel,
        )
        new.load_state_dict(fc.state_dict(), strict=False)
        new.refresh_weight_qparams()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_int8(x, F.linear)


def _quant_args(base: str):
    base_args = LEAVES[base][1]

    def args(m: nn.Module) -> dict[str, Any]:
        info: dict[str, Any] = getattr(m, "slimkit_quant")["int8"]  # noqa: B009
        return {
            **base_args(m),
            "activation": info["activation"],
            "per_channel": info["per_channel"],
        }

    return args


# Saved int8 models rebuild from JSON (buffers and slimkit_quant are restored by spec).
register_leaf("QuantConv2d", QuantConv2d, _quant_args("Conv2d"))
register_leaf("QuantLinear", QuantLinear, _quant_args("Linear"))

QUANT_TYPES = (QuantConv2d, QuantLinear)


def set_state(model: nn.Module, state: str) -> None:
    """Put every fake-quant layer of ``model`` into ``state`` (one of STATES)."""
    for m in model.modules():
        if isinstance(m, QUANT_TYPES):
            m.state = state
