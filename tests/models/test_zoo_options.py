"""Each zoo builder's own size options are checked by build_model: a message naming the option
and its range, never a torch traceback, a silently truncated float or a model without blocks."""

import numpy as np
import pytest
import torch

from slimkit import io as slim_io
from slimkit.errors import ConfigError
from slimkit.models import build_model


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet", {"width": -1}, r"width must be an integer in 1..1024, but got -1"),  # torch
        ("resnet", {"blocks": -1}, r"blocks must be an integer in 1..16"),  # built no block
        ("resnet", {"blocks": 0}, r"blocks must be an integer in 1..16"),
        ("searchnet", {"width": 0, "block": "dwsep"}, r"width must be an integer in 1..4096"),
        ("searchnet", {"kernel": 0}, r"kernel must be an integer in 1..31"),
        (
            "searchnet",
            {"kernel": 4, "block": "residual"},
            r"the 'residual' block needs an odd kernel",
        ),
        ("searchnet", {"block": "conv"}, r"block must be one of \['plain', 'dwsep', 'residual'\]"),
        ("lenet5", {"hidden": 64.9}, r"hidden must be an integer in 1..100000, but got 64.9"),
        ("lenet5", {"channels": (8.5, 16)}, r"channels must be two integers in 1..4096"),
        ("lenet5", {"hidden": True}, r"hidden must be an integer"),
        ("mobilenetv2", {"stem": 0}, r"stem must be an integer in 1..1024"),
        ("mobilenetv2", {"last": "128"}, r"last must be an integer in 1..8192"),
    ],
)
def test_bad_builder_options_are_a_config_error(name, kwargs, message):
    with pytest.raises(ConfigError, match=rf"zoo model '{name}': {message}"):
        build_model(name, image_size=8, **kwargs)


def test_numpy_integers_are_plain_ints_and_the_model_saves(tmp_path):
    # width=np.int64(16) built, then failed at save time ("meta must hold only JSON values").
    model = build_model(
        "resnet", image_size=np.int64(8), width=np.int64(4), blocks=np.int32(1), seed=np.int64(0)
    )
    kwargs = model.slimkit_arch["kwargs"]
    assert kwargs == {"image_size": 8, "width": 4, "blocks": 1}
    assert all(type(v) is int for v in kwargs.values())
    slim_io.save(model, tmp_path / "m.safetensors")
    lenet = build_model("lenet5", image_size=8, channels=(np.int64(4), 8), hidden=np.int64(16))
    assert lenet.slimkit_arch["kwargs"]["channels"] == (4, 8)
    slim_io.save(lenet, tmp_path / "l.safetensors")
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(slim_io.load(tmp_path / "l.safetensors").eval()(x), lenet.eval()(x))


def test_an_unknown_option_names_the_builders_options():
    with pytest.raises(ConfigError, match=r"rejected its options.*its options are \[.*'width'"):
        build_model("resnet", depth=3)


@pytest.mark.parametrize("seed", [-1, 2.0, "0", 2**63])
def test_a_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed must be a whole number"):
        build_model("lenet300", seed=seed)
