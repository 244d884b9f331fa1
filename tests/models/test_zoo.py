import pytest
import torch
from torch import nn

from slimkit import io as slim_io
from slimkit.errors import ConfigError
from slimkit.export.onnx import export_bytes, parity
from slimkit.metrics import count_params
from slimkit.models import build, build_model, describe, zoo_names
from slimkit.testing import randomize_batchnorm


@pytest.mark.parametrize("name", zoo_names())
@pytest.mark.parametrize("size", [8, 28])
def test_every_zoo_model_runs_exports_and_roundtrips(name, size, tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, image_size=size)).eval()
    x = torch.randn(2, 1, size, size)
    assert model(x).shape == (2, 10)
    assert parity(model, export_bytes(model, x[:1]), x[:1]) < 1e-4
    path = tmp_path / "m.safetensors"
    slim_io.save(model, path)
    loaded = slim_io.load(path)
    assert torch.equal(loaded(x), model(x))


def test_deep_compression_sizes():
    # Han et al. 2015: LeNet-300-100 has 267K weights, LeNet-5 431K.
    assert count_params(build_model("lenet300")) == 266_610
    assert count_params(build_model("lenet5")) == 431_080


def test_unknown_model_lists_names():
    with pytest.raises(
        ConfigError,
        match=r"unknown zoo model 'vgg'; valid names are \['lenet300', 'lenet5', 'mobilenetv2', 'resnet', 'searchnet'\]",
    ):
        build_model("vgg")
    with pytest.raises(ConfigError, match="rejected its options"):
        build_model("lenet5", depth=3)


def test_spec_rebuilds_changed_layers():
    model = build_model("resnet", image_size=8)
    # A pruned conv (fewer channels) and a factorised Linear, as compression would leave them.
    model.layers[0].conv1 = nn.Conv2d(16, 8, 3, 1, 1, bias=False)
    model.layers[0].bn1 = nn.BatchNorm2d(8)
    model.layers[0].conv2 = nn.Conv2d(8, 16, 3, 1, 1, bias=False)
    model.fc = nn.Sequential(nn.Linear(64, 4, bias=False), nn.Linear(4, 10))
    model.fc.slimkit_note = {"rank": 4}
    model.fc[0].register_buffer("weight_scale", torch.ones(4))
    rebuilt = build(describe(model))
    assert rebuilt.fc.slimkit_note == {"rank": 4}
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))
