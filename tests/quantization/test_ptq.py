"""Static int8 PTQ: ORT int8 kernels run, int8 initializers, agreement within one step, accuracy."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError, TargetError
from slimkit.quantization import StaticInt8, export_int8_onnx
from slimkit.quantization.fakequant import QuantConv2d, QuantLinear
from slimkit.quantization.ptq import ort_agreement
from slimkit.testing import check_contract, randomize_batchnorm, tiny_models
from slimkit.training import TrainConfig, evaluate_accuracy, train

MODELS = tiny_models(image_size=8)


@pytest.fixture(scope="module")
def data():
    return sk.load_dataset("digits", batch_size=64, calib_samples=128)


@pytest.fixture(scope="module")
def trained(data):
    out = {}
    for name in ("lenet5", "mobilenetv2"):
        torch.manual_seed(0)
        m = sk.build_model(name, image_size=8)
        train(m, data, TrainConfig(epochs=2, lr=3e-3, seed=0))
        out[name] = (m, evaluate_accuracy(m, data.test))
    return out


def _test_x(data):
    return torch.cat([x for x, _ in data.test])


def _optimized_ops(path, tmp_path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}


@pytest.mark.parametrize("name", ["lenet5", "mobilenetv2"])
def test_static_int8_runs_int8_kernels_and_agrees(name, data, trained, tmp_path):
    fp32, fp32_acc = trained[name]
    model = sk.quantize_(
        copy.deepcopy(fp32), StaticInt8(observer="mse", calib_samples=128), data=data
    )
    acc = evaluate_accuracy(model, data.test)
    assert acc >= fp32_acc - 0.02, (acc, fp32_acc)  # stated bound: within 2 pp of fp32 on digits

    x = _test_x(data)
    res = export_int8_onnx(model, tmp_path / "m.onnx", x[:2])
    assert res.bytes == (tmp_path / "m.onnx").stat().st_size
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    n_weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )
    # Every layer's weight is stored as int8: one byte per weight, no float copy left.
    assert res.int8_weights == n_layers and res.int8_weight_bytes == n_weights
    proto = onnx.load(str(tmp_path / "m.onnx"))
    float_sizes = [
        numpy_helper.to_array(i).size
        for i in proto.graph.initializer
        if numpy_helper.to_array(i).dtype == np.float32
    ]
    assert max(float_sizes) <= max(
        m.weight.shape[0] for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )  # scales only
    int8 = [
        numpy_helper.to_array(i)
        for i in proto.graph.initializer
        if i.name.endswith("weight_quantized")
    ]
    assert all(a.dtype == np.int8 and np.abs(a.astype(int)).max() <= 127 for a in int8)
    fp32_bytes = len(sk.export.onnx.export_bytes(fp32, x[:2]))
    # Weights are 4x smaller; per-channel scales and int32 biases weigh more in the tiny,
    # channel-heavy MobileNet (43k weights over 1.3k channels) than in LeNet-5.
    assert res.bytes < fp32_bytes / {"lenet5": 3.5, "mobilenetv2": 2.5}[name], (res, fp32_bytes)

    frac, worst = ort_agreement(model, res.path, x)
    assert frac >= 0.99, (frac, worst)  # ORT int8 vs torch fake-quant: within one output step
    ops = _optimized_ops(res.path, tmp_path)
    assert {"QLinearConv", "QGemm"} <= ops, ops
    assert "Conv" not in ops  # every conv runs as an int8 kernel


@pytest.mark.parametrize("observer", ["minmax", "percentile", "entropy"])
def test_every_observer_keeps_accuracy(observer, data, trained):
    fp32, fp32_acc = trained["lenet5"]
    model = sk.quantize_(
        copy.deepcopy(fp32), StaticInt8(observer=observer, calib_samples=128), data=data
    )
    assert evaluate_accuracy(model, data.test) >= fp32_acc - 0.03


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract_every_zoo_model(name, data):
    model = randomize_batchnorm(copy.deepcopy(MODELS[name]), seed=2)
    x = _test_x(data)[:16]
    res = check_contract(
        model,
        lambda m: sk.quantize_(m, StaticInt8(observer="minmax", calib_samples=128), data=data),
        x,
        min_sqnr_db=15.0,  # int8 activations + weights through a random-weight net
        onnx_atol=0.1,
    )
    assert res.roundtrip_max_diff == 0.0


def test_save_load_keeps_int8_layers(data, trained, tmp_path):
    model = sk.quantize_(
        copy.deepcopy(trained["lenet5"][0]), StaticInt8(calib_samples=64), data=data
    )
    sk.save(model, tmp_path / "q.safetensors")
    loaded = sk.load(tmp_path / "q.safetensors")
    assert isinstance(loaded.conv1, QuantConv2d) and isinstance(loaded.fc1, QuantLinear)
    assert (
        loaded.fc1.activation == "relu"
        and loaded.conv2.slimkit_quant["int8"]["input_from"] == "conv1"
    )
    x = _test_x(data)[:32]
    assert torch.equal(loaded(x), model(x))


def test_ignore_keeps_layer_float(data, trained, tmp_path):
    model = sk.quantize_(
        copy.deepcopy(trained["lenet5"][0]), StaticInt8(calib_samples=64, ignore=["fc2"]), data=data
    )
    assert type(model.fc2) is nn.Linear and isinstance(model.fc1, QuantLinear)
    res = export_int8_onnx(model, tmp_path / "m.onnx", _test_x(data)[:2])
    assert res.int8_weights == 3


def test_bn_folded_and_relu_fused():
    model = randomize_batchnorm(copy.deepcopy(MODELS["resnet"]), seed=0)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sk.quantize_(model, StaticInt8(calib_samples=64), data=x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.stem[0].activation == "relu" and isinstance(model.stem[2], nn.Identity)
    assert model.layers[0].conv2.activation == "none"  # its ReLU follows the residual add


def test_calibration_size_errors(data):
    model = copy.deepcopy(MODELS["lenet5"])
    with pytest.raises(ConfigError, match=r"calib_samples=256 samples, but the data holds 128"):
        sk.quantize_(model, StaticInt8(calib_samples=256), data=data)
    with pytest.raises(ConfigError, match=r"holds 0"):
        sk.quantize_(model, StaticInt8(calib_samples=8), data=torch.zeros(0, 1, 8, 8))
    with pytest.raises(ConfigError, match="calibration data"):
        sk.quantize_(model, StaticInt8(calib_samples=8))
    assert type(model.conv1) is nn.Conv2d  # a refused call leaves the model untouched


def test_config_errors_state_rule_and_value(data):
    with pytest.raises(ConfigError, match=r"observer must be one of .*'mse'.* but got 'msee'"):
        StaticInt8(observer="msee")
    with pytest.raises(ConfigError, match=r"calib_samples must be in 1..1000000, but got 0"):
        StaticInt8(calib_samples=0)
    with pytest.raises(TargetError, match="near matches"):
        sk.quantize_(
            copy.deepcopy(MODELS["lenet5"]), StaticInt8(calib_samples=8, targets=["fc"]), data=data
        )
    assert StaticInt8.from_dict({"observer": "percentile", "percentile": 99.9}).percentile == 99.9
    with pytest.raises(ConfigError, match="no int8 layers"):
        export_int8_onnx(
            copy.deepcopy(MODELS["lenet5"]), "/tmp/never.onnx", torch.zeros(1, 1, 8, 8)
        )
    q = sk.quantize_(copy.deepcopy(MODELS["lenet5"]), StaticInt8(calib_samples=8), data=data)
    with pytest.raises(ConfigError, match="already holds int8"):
        sk.quantize_(q, StaticInt8(calib_samples=8), data=data)


def test_int8_layers_follow_the_shared_weight_convention(data, trained, tmp_path):
    from slimkit.export import slimformat
    from slimkit.quantization import dequantize, weight_codes

    model = sk.quantize_(
        copy.deepcopy(trained["lenet5"][0]), StaticInt8(calib_samples=64), data=data
    )
    for layer in (model.conv1, model.fc1):
        qc = weight_codes(layer)
        assert qc.scheme == "linear" and qc.bits == 8
        assert int(qc.codes.min()) >= 1 and int(qc.codes.max()) <= 255
        assert torch.equal(dequantize(qc), layer.weight)
        assert torch.equal(qc.codes.to(torch.int64) - 128, layer.int8_codes().to(torch.int64))
    n = slimformat.save(model, tmp_path / "m.slim")
    assert n < 0.3 * 4 * sum(p.numel() for p in model.parameters())  # int8 codes, not floats


def test_weight_sqnr_is_measured_against_the_folded_weights():
    # The report compared the int8 weights with the weights before BatchNorm folding, so a
    # BN scale gamma / sqrt(var + eps) far from 1 read as quantization noise (~5 dB, not ~48).
    from slimkit.config import get_module
    from slimkit.decomposition.fusion import fuse_batchnorm
    from slimkit.metrics.fidelity import sqnr_db
    from slimkit.quantization.common import layer_reports

    model = randomize_batchnorm(sk.build_model("resnet", image_size=8, seed=0)).eval()
    original = copy.deepcopy(model)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    q = sk.quantize_(model, StaticInt8(calib_samples=32), data=x)
    rows = {r.layer: r for r in layer_reports(original, q)}
    assert len(rows) == len([m for m in q.modules() if isinstance(m, (QuantConv2d, QuantLinear))])
    folded = copy.deepcopy(original)
    fuse_batchnorm(folded)
    for name, row in rows.items():
        want = sqnr_db(get_module(folded, name).weight, get_module(q, name).weight)
        assert row.weight_sqnr_db == pytest.approx(want), name
        assert row.weight_sqnr_db > 40, name  # int8 per channel: quantization error only
    # the reference is folded on a copy: the caller's original keeps its BatchNorms
    assert any(isinstance(m, nn.BatchNorm2d) for m in original.modules())


def test_int8_refuses_a_batchnorm_it_cannot_fold():
    # A BN without running statistics has no int8 form (it normalizes per batch); it was
    # dropped as if folded, then the export failed on a bare AssertionError once kept.
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"BatchNorm '1' after '0' must be folded"):
        sk.quantize_(model, StaticInt8(calib_samples=16), data=x)
    assert type(model[0]) is nn.Conv2d and isinstance(model[1], nn.BatchNorm2d)  # untouched
