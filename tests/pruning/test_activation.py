"""Activation statistics by layer name: sites, mean |a|, APoZ, Taylor; activation pruning."""

from __future__ import annotations

import copy

import torch
from torch import nn

import slimkit as sk
from slimkit.models import build_model
from slimkit.pruning import ChannelPruning
from slimkit.pruning.activation import activation_sites, collect_stats


def test_sites_follow_the_activation_that_reads_the_layer():
    model = build_model("resnet", image_size=8).eval()
    sites = activation_sites(
        model, torch.randn(2, 1, 8, 8), ["layers.0.bn1", "layers.0.bn2", "layers.0.conv1"]
    )
    assert sites["layers.0.bn1"] == "layers.0.relu1"
    assert sites["layers.0.bn2"] == "layers.0.bn2"  # feeds the residual add, not a ReLU
    assert sites["layers.0.conv1"] == "layers.0.conv1"


def _dead_channel_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[0].bias[1] = -1.0  # channel 1 is always negative before ReLU: dead
        net[0].weight[2] = 0.0
        net[0].bias[2] = 2.0  # channel 2 is constant 2 after ReLU
    return net


def test_stats_values_are_exact_on_known_channels():
    net = _dead_channel_net()
    x = torch.randn(16, 1, 8, 8)
    loader = [(x[:8], torch.zeros(8, dtype=torch.long)), (x[8:], torch.ones(8, dtype=torch.long))]
    stats = collect_stats(net, loader, ["1"], taylor=True)["1"]
    assert stats.samples == 16
    assert stats.apoz[1] == 1.0 and stats.mean_abs[1] == 0.0
    assert stats.apoz[2] == 0.0 and torch.isclose(stats.mean_abs[2], torch.tensor(2.0))
    assert stats.taylor is not None and stats.taylor[1] == 0.0  # a == 0 -> no first-order change
    assert (stats.taylor >= 0).all()
    assert all(p.grad is None for p in net.parameters())  # grads left as they were


def test_apoz_and_activation_remove_the_dead_channel():
    for criterion in ("apoz", "activation", "taylor"):
        net = _dead_channel_net()
        x = torch.randn(16, 1, 8, 8)
        loader = [(x, torch.randint(0, 3, (16,)))]
        ref = copy.deepcopy(net)
        sk.prune_(net, ChannelPruning(ratio=0.25, criterion=criterion), data=loader)
        assert net[0].out_channels == 3 and net[3].in_features == 192
        # removing a dead ReLU channel is exact
        assert (ref(x) - net(x)).abs().max() < 1e-5


def test_activation_pruning_on_digits(digits):
    model = build_model("lenet5", image_size=8).eval()
    sk.prune_(model, ChannelPruning(ratio=0.5, criterion="apoz"), data=digits)
    assert model.conv1.out_channels == 10 and model.fc1.out_features == 250
