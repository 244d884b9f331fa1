"""LeNet-5's optional ``channels`` / ``hidden`` keywords (a slim student for distillation)."""

import pytest
import torch

from slimkit import io as slim_io
from slimkit.errors import ConfigError
from slimkit.metrics import count_params
from slimkit.models import build_model


def test_default_lenet5_is_unchanged_by_the_width_keywords():
    default = build_model("lenet5", seed=0)
    explicit = build_model("lenet5", seed=0, channels=(20, 50), hidden=500)
    assert count_params(default) == 431_080
    for (n1, p1), (n2, p2) in zip(
        default.state_dict().items(), explicit.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)


def test_slim_lenet5_keeps_layer_names_and_roundtrips(tmp_path):
    slim = build_model("lenet5", seed=0, channels=(8, 16), hidden=64)
    # conv1 1*8*25+8, conv2 8*16*25+16, fc1 256*64+64, fc2 64*10+10
    assert count_params(slim) == 208 + 3216 + 16448 + 650 == 20_522
    assert [n for n, _ in slim.named_children()] == [
        n for n, _ in build_model("lenet5").named_children()
    ]
    x = torch.randn(2, 1, 28, 28)
    assert slim(x).shape == (2, 10)
    path = tmp_path / "slim.safetensors"
    slim_io.save(slim, path)
    assert torch.equal(slim_io.load(path)(x), slim(x))


def test_slim_lenet5_on_8x8_inputs():
    model = build_model("lenet5", image_size=8, channels=(4, 8), hidden=16)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("kwargs", [{"channels": (8,)}, {"channels": (0, 4)}, {"hidden": 0}])
def test_bad_width_is_a_clear_error(kwargs):
    with pytest.raises(ConfigError, match=r"channels=\(conv1, conv2\) >= 1 and hidden >= 1"):
        build_model("lenet5", **kwargs)
