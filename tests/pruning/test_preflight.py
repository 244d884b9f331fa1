"""Pre-flight: layers the structural engine cannot resize are named before any work starts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.pruning import ChannelPruning, preflight
from slimkit.testing import tiny_models


class Scale(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x):
        return x * self.alpha


class WithCustom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = Scale(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.scale(self.conv(x))))


class WithGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.grouped(self.conv(x))))


def test_custom_layer_with_weights_is_named_before_any_change():
    model = WithCustom()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        ConfigError, match=r"layer 'scale' of type Scale holds its own weights \['alpha'\]"
    ):
        sk.prune_(model, ChannelPruning(ratio=0.5), example_inputs=torch.randn(1, 1, 8, 8))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_grouped_conv_is_named():
    with pytest.raises(ConfigError, match=r"layer 'grouped' \(Conv2d, in=4, out=4, groups=2\)"):
        sk.prune_(WithGrouped(), ChannelPruning(ratio=0.5), example_inputs=torch.randn(1, 1, 8, 8))


def test_zoo_models_and_depthwise_pass():
    for model in tiny_models().values():
        preflight(model)


def test_masked_model_is_refused_before_any_change(tmp_path):
    # Channel pruning used to slice the weights but not their 'weight_mask' buffers: the next
    # training-mode forward failed on the shape mismatch (or a stale mask zeroed wrong weights).
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = sk.build_model("lenet5", image_size=8, seed=0)
    sk.prune_(model, sk.MagnitudePruning(sparsity=0.5))
    path = tmp_path / "masked.safetensors"
    sk.save(model, path)
    for masked in (model, sk.load(path)):  # load re-attaches the masks
        before = copy.deepcopy(masked.state_dict())
        with pytest.raises(
            ConfigError,
            match=r"layers \['conv1', .*\] still carry unstructured pruning masks \('weight_mask'\)"
            r".*apply structured \(channel\) pruning before unstructured pruning, or fold the "
            r"masks into zeros first with slimkit\.pruning\.finalize_\(model\)",
        ):
            sk.prune_(masked, ChannelPruning(ratio=0.5), example_inputs=x)
        after = masked.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_finalized_masks_then_channel_pruning_trains():
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = sk.build_model("lenet5", image_size=8, seed=0)
    sk.prune_(model, sk.MagnitudePruning(sparsity=0.5))
    sk.finalize_(model)
    sk.prune_(model, ChannelPruning(ratio=0.5), example_inputs=x)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    model.train()
    assert torch.isfinite(model(x)).all()


def test_parametrized_layer_is_refused():
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    model = sk.build_model("lenet5", image_size=8, seed=0)
    parametrize.register_parametrization(model.conv1, "weight", Double())
    with pytest.raises(ConfigError, match=r"layers \['conv1'\] hold torch\.nn\.utils\.parametrize"):
        preflight(model)


def test_torch_pruned_layer_gets_torch_s_own_fix():
    # finalize_ removes slimkit's masks; torch.nn.utils.prune keeps weight_orig and its own hook,
    # so the fix named for them is torch's prune.remove.
    from torch.nn.utils import prune

    model = sk.build_model("lenet5", image_size=8, seed=0)
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    with pytest.raises(ConfigError, match=r"torch\.nn\.utils\.prune\.remove\(layer, 'weight'\)"):
        preflight(model)
    prune.remove(model.conv1, "weight")
    preflight(model)  # the fix named works
