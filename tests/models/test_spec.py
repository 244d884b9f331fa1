"""Rebuilding a model from its JSON spec: a bad spec is a ConfigError naming the layer, checked
on the meta device before anything is allocated."""

import copy

import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.models import build, build_model, describe, zoo_names
from slimkit.models import spec as model_spec


@pytest.fixture
def lenet_spec():
    return describe(build_model("lenet5", image_size=8))


@pytest.mark.parametrize("name", zoo_names())
def test_every_zoo_spec_builds_on_meta_with_the_real_shapes(name):
    model = build_model(name, image_size=8)
    spec = describe(model)
    with torch.device("meta"):
        meta = build(spec)
    assert {p.device.type for p in meta.state_dict().values()} == {"meta"}
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    rebuilt = build(spec, shapes=shapes)
    assert {k: list(v.shape) for k, v in rebuilt.state_dict().items()} == shapes


def test_a_spec_larger_than_memory_is_refused_without_allocating(lenet_spec):
    spec = copy.deepcopy(lenet_spec)
    spec["tree"]["children"]["fc1"]["args"]["out_features"] = 10**12  # 4 PB of fp32
    with pytest.raises(ConfigError, match=r"more than this machine's memory.*'fc1.weight'"):
        build(spec)


def test_memory_limit_counts_every_tensor(lenet_spec, monkeypatch):
    monkeypatch.setattr(model_spec, "memory_limit", lambda: 100_000)
    with pytest.raises(ConfigError, match=r"0.\d+ MiB\); the largest tensor is 'fc1.weight' with"):
        build(lenet_spec)


def test_shapes_that_differ_from_the_file_name_the_tensors(lenet_spec):
    shapes = {k: list(v.shape) for k, v in build(lenet_spec).state_dict().items()}
    shapes["fc2.weight"] = [10, 499]
    del shapes["conv1.bias"]
    shapes["extra"] = [3]
    with pytest.raises(ConfigError) as err:
        build(lenet_spec, shapes=shapes)
    text = str(err.value)
    assert "'conv1.bias' (shape [20]) is in the spec but not in the file" in text
    assert "'extra' (shape [3]) is in the file but not in the spec" in text
    assert "'fc2.weight' has shape [10, 500] in the spec but [10, 499] in the file" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(arch="x"), "must be a JSON object with an 'arch' object"),
        (lambda s: s["arch"].update(kwargs=[1]), "the spec's arch must be"),
        (
            lambda s: s["arch"]["kwargs"].update(in_channels=-1),
            "zoo model 'lenet5': in_channels must be an integer in 1..64, but got -1",
        ),
        (lambda s: s["tree"]["children"].update(fc1=[1]), "layer 'fc1': a spec node must be"),
        (
            lambda s: s["tree"]["children"]["fc1"].update(args="x"),
            "layer 'fc1': Linear 'args' must be a JSON object",
        ),
        (
            lambda s: s["tree"]["children"]["fc1"].update(buffers={"b": [[2], "load"]}),
            "layer 'fc1': buffer 'b' must be [shape",
        ),
        (
            lambda s: s["tree"]["children"]["fc1"].update(buffers={"b": [[-2], "float32"]}),
            "layer 'fc1': buffer 'b' must be [shape",
        ),
        (
            lambda s: s["tree"]["children"]["fc1"].update(attrs={"forward": 1}),
            "layer 'fc1': attribute 'forward' cannot be set from a file",
        ),
        (
            lambda s: s["tree"]["children"].update(
                fc1={"type": "Sequential", "children": {"0": {"type": "Linear", "args": {}}}}
            ),
            "layer 'fc1.0': Linear rejects the arguments {}",
        ),
    ],
)
def test_malformed_specs_are_config_errors_naming_the_layer(lenet_spec, edit, message):
    spec = copy.deepcopy(lenet_spec)
    edit(spec)
    with pytest.raises(ConfigError) as err:
        build(spec)
    assert message in str(err.value)
