"""QAT int8: STE training keeps accuracy, observers freeze, the same int8 ONNX graph agrees."""

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.quantization import QATInt8, export_int8_onnx
from slimkit.quantization.fakequant import QuantLinear
from slimkit.quantization.ptq import ort_agreement
from slimkit.training import TrainConfig, evaluate_accuracy, train


@pytest.fixture(scope="module")
def data():
    return sk.load_dataset("digits", batch_size=64, calib_samples=128)


def test_qat_lenet5_accuracy_and_ort_agreement(data, tmp_path):
    torch.manual_seed(0)
    fp32 = sk.build_model("lenet5", image_size=8)
    train(fp32, data, TrainConfig(epochs=2, lr=3e-3))
    fp32_acc = evaluate_accuracy(fp32, data.test)
    cfg = QATInt8(
        train=TrainConfig(epochs=2, lr=3e-4, max_batches=10),
        freeze_observers_epoch=1,
        calib_samples=128,
    )
    model = sk.quantize_(copy.deepcopy(fp32), cfg, data=data)
    acc = evaluate_accuracy(model, data.test)
    assert acc >= fp32_acc - 0.01, (acc, fp32_acc)  # stated bound: within 1 pp of fp32
    x = torch.cat([x for x, _ in data.test])
    res = export_int8_onnx(model, tmp_path / "qat.onnx", x[:2])
    assert res.int8_weights == 4
    frac, worst = ort_agreement(model, res.path, x)
    assert frac >= 0.99, (frac, worst)
    assert all(m.state == "quant" for m in model.modules() if hasattr(m, "state"))


def test_observers_freeze_and_weights_train():
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(4, 3), activation="relu")
    layer.state = "qat"
    layer.train()
    x = torch.randn(8, 4)
    layer.input_scale.fill_(0.01)  # a narrow starting grid
    layer.output_scale.fill_(0.01)
    before = (float(layer.input_scale), float(layer.output_scale))
    layer(x * 5)  # wider inputs move the moving-average ranges
    moved = (float(layer.input_scale), float(layer.output_scale))
    assert moved[0] > before[0] and moved[1] != before[1]
    layer.slimkit_quant["int8"]["frozen"] = True
    layer(x * 50)
    assert (float(layer.input_scale), float(layer.output_scale)) == moved
    # Straight-through: the fake-quant layer still gives the weights a gradient.
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_freeze_epoch_respected(data):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    seen = []

    cfg = QATInt8(
        train=TrainConfig(epochs=2, lr=1e-3, max_batches=3),
        freeze_observers_epoch=1,
        calib_samples=64,
    )
    from slimkit.quantization import qat as qat_mod

    real = qat_mod.train

    def spy(m, d, c, **kw):
        hook = kw["on_epoch_end"]

        def record(epoch, mm):
            hook(epoch, mm)
            seen.append((epoch, float(mm.fc1.output_scale), mm.fc1.slimkit_quant["int8"]["frozen"]))

        kw["on_epoch_end"] = record
        return real(m, d, c, **kw)

    qat_mod.train = spy
    try:
        sk.quantize_(model, cfg, data=data)
    finally:
        qat_mod.train = real
    assert [s[2] for s in seen] == [True, True]
    assert seen[0][1] == seen[1][1]  # frozen after epoch 1: the grid did not move in epoch 2


def test_qat_config_rules():
    with pytest.raises(
        ConfigError, match=r"freeze_observers_epoch must be <= train.epochs \(1\), but got 3"
    ):
        QATInt8(train=TrainConfig(epochs=1), freeze_observers_epoch=3)
    cfg = QATInt8.from_dict({"train": {"epochs": 3, "lr": 1e-4}, "observer": "percentile"})
    assert isinstance(cfg.train, TrainConfig) and cfg.train.epochs == 3
    assert cfg.to_dict()["train"]["epochs"] == 3
    with pytest.raises(ConfigError, match="DataBundle"):
        sk.quantize_(
            sk.build_model("lenet300", image_size=8), QATInt8(), data=torch.zeros(4, 1, 8, 8)
        )


def test_qat_keeps_a_pruned_model_pruned(data):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    sk.prune_(model, sk.MagnitudePruning(sparsity=0.8))
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    cfg = QATInt8(train=TrainConfig(epochs=1, lr=1e-2, max_batches=5), calib_samples=64)
    sk.quantize_(model, cfg, data=data)
    for n, mask in zeros.items():  # was: the zeros trained back, a dense int8 model
        w = dict(model.named_modules())[n].weight
        assert (w[mask] == 0).all(), n  # (a kept weight may also round to 0 on the grid)


def test_qat_refuses_a_batchnorm_it_cannot_fold(data):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    cfg = QATInt8(train=TrainConfig(epochs=1, max_batches=1), calib_samples=64)
    with pytest.raises(ConfigError, match="track_running_stats=False"):
        sk.quantize_(model, cfg, data=data)
    assert isinstance(model[1], nn.BatchNorm2d)


def test_qat_trains_weights_that_calibration_rounded_to_zero(data, monkeypatch):
    # The zeros to keep were read after calibration had snapped the weights onto the int8
    # grid: with one per-tensor scale, BN folding left channel 7 tiny, it rounded to 0 (8 of 9), and
    # QAT then held it at 0 for good as if pruned.
    from slimkit.pruning.keep_zeros import MIN_ZERO_SHARE
    from slimkit.quantization import qat
    from slimkit.quantization.ptq import prepare_and_calibrate

    def make() -> nn.Sequential:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10)
        )
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor([5.0, 3, 1, 0.5, 0.2, 0.1, 0.05, 0.02]))
            model[1].bias.fill_(1.0)  # ReLU open: every conv weight gets a gradient
        return model.eval()

    cfg = QATInt8(
        train=TrainConfig(epochs=1, lr=1e-3, max_batches=5), per_channel=False, calib_samples=64
    )
    calibrated = make()
    assert (make()[0].weight != 0).all()  # no pruning zeros in the float model
    prepare_and_calibrate(calibrated, cfg, data)
    assert float((calibrated[0].weight == 0).float().mean()) >= MIN_ZERO_SHARE  # the trigger
    assert int((calibrated[0].weight[7] == 0).sum()) >= 8

    trained: dict[str, torch.Tensor] = {}
    finish = qat.finish_qat
    monkeypatch.setattr(
        qat, "finish_qat", lambda m: trained.update(w=m[0].weight.detach().clone()) or finish(m)
    )
    sk.quantize_(make(), cfg, data=data)
    w = trained["w"]  # the trained weights, before the final snap onto the grid
    assert float((w == 0).float().mean()) < 0.01
    assert int((w[7] == 0).sum()) == 0
