"""Depthwise-separable replacement: exact on separable kernels, LS fit beats the weight init,
recovery wins back accuracy, every zoo model survives."""

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.decomposition import DepthwiseSeparable, decomposition_plan
from slimkit.errors import ConfigError, TargetError
from slimkit.testing import check_contract, tiny_models
from slimkit.training import TrainConfig, evaluate_accuracy, train


def _separable_conv(stride: int = 1) -> nn.Conv2d:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=1)
    p, d = torch.randn(10, 6, generator=g), torch.randn(6, 9, generator=g)
    conv.weight.data = (p[:, :, None] * d[None]).reshape(10, 6, 3, 3)  # (out, in, kh, kw)
    return conv


class _Calib:
    """A DataBundle stand-in: only ``calib`` is read by the fit."""

    def __init__(self, x: torch.Tensor) -> None:
        self.calib = [(x, torch.zeros(len(x), dtype=torch.long))]


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_kernel_is_reproduced_with_and_without_data(stride):
    conv = _separable_conv(stride)
    x = torch.randn(8, 6, 9, 9)
    for data in (None, _Calib(x)):
        m = nn.Sequential(copy.deepcopy(conv))
        sk.decompose_(m, DepthwiseSeparable(), data=data)
        dw, pw = m[0]
        assert dw.groups == 6 and dw.stride == (stride, stride) and pw.kernel_size == (1, 1)
        with torch.no_grad():
            assert float((m(x) - conv(x)).abs().max()) < 1e-4


def test_least_squares_fit_beats_the_weight_init_on_held_out_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    # Correlated inputs (smooth images), where the data-driven fit has something to exploit.
    base = torch.randn(64, 8, 4, 4)
    x = nn.functional.interpolate(base, size=(10, 10), mode="bilinear")
    x_cal, x_test = x[:48], x[48:]
    errs = {}
    for label, data in (("init", None), ("fit", _Calib(x_cal))):
        m = nn.Sequential(copy.deepcopy(conv))
        sk.decompose_(m, DepthwiseSeparable(als_iters=6), data=data)
        with torch.no_grad():
            ref = conv(x_test)
            errs[label] = float((m(x_test) - ref).norm() / ref.norm())
    assert errs["fit"] < 0.75 * errs["init"], errs  # measured 0.62 vs 0.91


def test_recovery_by_distillation_wins_back_accuracy(digits):
    torch.manual_seed(0)
    model = sk.build_model("resnet", image_size=8)
    train(model, digits, TrainConfig(epochs=2, seed=0))
    dense = evaluate_accuracy(model, digits.test)
    plain = copy.deepcopy(model)
    sk.decompose_(plain, DepthwiseSeparable(als_iters=0))
    recovered = copy.deepcopy(model)
    rec = {"mode": "distill", "epochs": 2, "lr": 2e-3}
    sk.decompose_(recovered, DepthwiseSeparable(als_iters=0, recovery=rec), data=digits)
    acc_plain = evaluate_accuracy(plain, digits.test)
    acc_rec = evaluate_accuracy(recovered, digits.test)
    assert acc_rec > acc_plain + 0.05, (dense, acc_plain, acc_rec)
    assert sum(p.numel() for p in recovered.parameters()) < sum(
        p.numel() for p in model.parameters()
    )


def test_fit_on_a_real_model_records_output_error(digits):
    model = sk.build_model("lenet5", image_size=8)
    sk.decompose_(model, DepthwiseSeparable(calib_batches=1), data=digits)
    plan = decomposition_plan(model)
    assert "1 input channel" in plan["conv1"]["reason"] and not plan["conv1"]["applied"]
    assert plan["conv2"]["applied"] and 0.0 <= plan["conv2"]["rel_error"] < 1.0
    assert plan["conv2"]["params_after"] == 20 * 25 + 20 * 50 + 50


def test_bad_options_are_errors():
    with pytest.raises(ConfigError, match="als_iters"):
        DepthwiseSeparable(als_iters=-1)
    with pytest.raises(ConfigError, match="recovery mode"):
        DepthwiseSeparable(recovery={"mode": "finetun"})


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_every_zoo_model_survives_and_exports(name):
    model = tiny_models()[name]
    x = torch.randn(2, 1, 8, 8)
    cfg = DepthwiseSeparable()
    if name == "lenet300":  # no Conv2d: finding nothing to factorise is an error, not a no-op
        with pytest.raises(TargetError, match="found no layer to decompose"):
            sk.decompose_(model, cfg)
        return
    check_contract(model, lambda m: sk.decompose_(m, cfg), x)
