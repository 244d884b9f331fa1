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
