"""Dynamic int8 (Linear, LSTM) through ORT's quantize_dynamic: integer kernels, exclusions."""

import copy

import numpy as np
import onnx
import torch
from torch import nn

import slimkit as sk
from slimkit.export.ort import make_session
from slimkit.metrics import sqnr_db
from slimkit.quantization import DynamicInt8, export_int8_onnx


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_dynamic_linear_int8_kernels_and_fidelity(tmp_path):
    torch.manual_seed(0)
    fp32 = sk.build_model("lenet300", image_size=8).eval()
    model = sk.quantize_(copy.deepcopy(fp32), DynamicInt8(ignore=["fc3"]))
    # Weights sit on the symmetric int8 grid of each output row; fc3 is untouched.
    codes = model.fc1.weight / model.fc1.weight_scale
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 127
    assert torch.equal(model.fc3.weight, fp32.fc3.weight)
    x = torch.randn(32, 1, 8, 8)
    res = export_int8_onnx(model, tmp_path / "dyn.onnx", x[:2])
    ops = _ops(res.path)
    assert ops.count("MatMulInteger") == 2 and "DynamicQuantizeLinear" in ops
    assert ops.count("MatMul") == 1  # the excluded fc3 stays float
    assert res.int8_weights == 2 and res.int8_weight_bytes == 64 * 300 + 300 * 100
    sess = make_session(res.path, threads=1)
    got = sess.run(None, {"input": x.numpy()})[0]
    assert sqnr_db(fp32(x), torch.from_numpy(got)) > 30.0  # int8 weights + per-batch activations


def test_dynamic_lstm(tmp_path):
    torch.manual_seed(0)

    class Tagger(nn.Module):  # (B, T, 8) -> (B, 5)
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 32, batch_first=True)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    model = Tagger().eval()
    x = torch.randn(4, 6, 8)
    ref = model(x).detach()
    sk.quantize_(model, DynamicInt8())
    res = export_int8_onnx(model, tmp_path / "lstm.onnx", x)
    ops = _ops(res.path)
    assert "DynamicQuantizeLSTM" in ops and "MatMulInteger" in ops
    sess = make_session(res.path, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert sqnr_db(ref, torch.from_numpy(got)) > 25.0
    assert np.isfinite(got).all()


def test_dynamic_round_trip(tmp_path):
    torch.manual_seed(0)
    model = sk.quantize_(sk.build_model("lenet300", image_size=8), DynamicInt8())
    sk.save(model, tmp_path / "d.safetensors")
    loaded = sk.load(tmp_path / "d.safetensors")
    assert loaded.slimkit_int8["mode"] == "dynamic"
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
