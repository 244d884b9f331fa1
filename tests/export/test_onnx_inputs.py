"""to_onnx checks its example input before exporting: a ConfigError, not a torch traceback."""

import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.export import to_onnx
from slimkit.models import build_model


def test_a_float64_example_is_refused_naming_the_dtype(tmp_path):
    model = build_model("lenet300", image_size=8, seed=0)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(
        ConfigError, match=r"float32 torch.Tensor .* got Tensor of float64.*\.float\(\)"
    ):
        to_onnx(model, tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()


def test_a_wrong_shape_is_refused_naming_the_input_the_model_takes(tmp_path):
    model = build_model("lenet5", seed=0)  # built for 28x28 inputs
    with pytest.raises(
        ConfigError, match=r"inputs of shape \(N, 1, 28, 28\).*torch.randn\(1, 1, 28, 28\)"
    ):
        to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert not (tmp_path / "m.onnx").exists()


def test_an_empty_example_is_refused(tmp_path):
    model = build_model("lenet300", image_size=8, seed=0)
    with pytest.raises(ConfigError, match="at least 1 sample"):
        to_onnx(model, tmp_path / "m.onnx", torch.randn(0, 1, 8, 8))


def test_an_example_that_requires_grad_exports(tmp_path):
    model = build_model("lenet300", image_size=8, seed=0).train()
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    res = to_onnx(model, tmp_path / "m.onnx", x)
    assert res.max_abs_diff < 1e-4 and (tmp_path / "m.onnx").stat().st_size == res.bytes
    assert x.grad is None and model.training  # nothing backpropagated, training mode given back
