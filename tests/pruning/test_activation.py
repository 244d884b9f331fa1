"""Activation statistics by layer name: sites, mean |a|, APoZ, Taylor; activation pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.pruning import ChannelPruning
from slimkit.pruning.activation import activation_sites, collect_stats
from slimkit.pruning.criteria import WEIGHT, Criterion, Member, group_scores, layer_scores


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


class _SharedReLU(nn.Module):
    """Two convs behind one ``self.relu`` (torchvision style); c1 ch 0,1 and c2 ch 2,3 dead."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.c1.bias.copy_(torch.tensor([-50.0, -50.0, 5.0, 5.0]))
            self.c2.bias.copy_(torch.tensor([20.0, 20.0, -50.0, -50.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.c1(x))
        return self.fc(self.relu(self.c2(a)).mean((2, 3)))


def test_shared_activation_module_keeps_statistics_per_layer():
    torch.manual_seed(0)
    net = _SharedReLU().eval()
    x = torch.randn(8, 3, 6, 6)
    sites = activation_sites(net, x[:2], ["c1", "c2"])
    assert sites == {"c1": "relu", "c2": "relu"}
    stats = collect_stats(net, [(x, torch.zeros(8, dtype=torch.long))], sites, taylor=True)
    with torch.no_grad():
        a1 = torch.relu(net.c1(x))
        a2 = torch.relu(net.c2(a1))
    torch.testing.assert_close(stats["c1"].mean_abs, a1.mean((0, 2, 3)))
    torch.testing.assert_close(stats["c2"].mean_abs, a2.mean((0, 2, 3)))
    assert stats["c1"].apoz[:2].tolist() == [1.0, 1.0] and stats["c1"].apoz[2:].tolist() == [0, 0]
    assert stats["c2"].apoz[:2].tolist() == [0.0, 0.0] and stats["c2"].apoz[2:].tolist() == [1, 1]
    for name in ("c1", "c2"):
        assert stats[name].samples == 8
        taylor = stats[name].taylor
        assert taylor is not None and taylor.shape == (4,)
    assert stats["c1"].taylor[:2].abs().max() == 0.0  # type: ignore[index]
    assert stats["c2"].taylor[2:].abs().max() == 0.0  # type: ignore[index]


def test_shared_activation_pruning_removes_the_dead_channels():
    for criterion in ("activation", "apoz", "taylor"):
        torch.manual_seed(0)
        net = _SharedReLU().eval()
        x = torch.randn(8, 3, 6, 6)
        ref = copy.deepcopy(net)
        loader = [(x, torch.randint(0, 2, (8,)))]
        sk.prune_(net, ChannelPruning(ratio=0.5, criterion=criterion, global_=False), data=loader)
        assert net.c1.out_channels == 2 and net.c2.out_channels == 2, criterion
        # only dead ReLU channels went: the output is unchanged
        assert (ref(x) - net(x)).abs().max() < 1e-5, criterion


class _TokenMLP(nn.Module):
    """Tokens (B, T=5, C=8) through fc1 (16 hidden units, 0..7 dead), LayerNorm, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.bias[:8] = -100.0
            self.fc1.bias[8:] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.fc2(self.act(self.fc1(x)))).mean(1))


def test_linear_and_layernorm_on_tokens_score_the_feature_axis():
    torch.manual_seed(0)
    net = _TokenMLP().eval()
    x = torch.randn(16, 5, 8)
    loader = [(x, torch.randint(0, 3, (16,)))]
    for criterion in (Criterion.ACTIVATION, Criterion.APOZ, Criterion.TAYLOR):
        scores = layer_scores(net, criterion, example=x[:2], loader=loader)
        assert scores["fc1"].shape == (16,), criterion
        assert scores["norm"].shape == (8,), criterion
        assert scores["fc1"][:8].abs().max() == 0.0, criterion
        assert (scores["fc1"][8:] > 0).all(), criterion
    with torch.no_grad():
        h = torch.relu(net.fc1(x))
    activation = layer_scores(net, Criterion.ACTIVATION, example=x[:2], loader=loader)
    torch.testing.assert_close(activation["fc1"], h.mean((0, 1)))

    ref = copy.deepcopy(net)
    sk.prune_(net, ChannelPruning(ratio=0.5, criterion="activation", targets=["fc1"]), data=loader)
    assert net.fc1.out_features == 8 and net.fc2.in_features == 8
    assert (ref(x) - net(x)).abs().max() < 1e-4  # only the dead hidden units went


def test_group_scores_refuse_a_score_shorter_than_the_layer():
    member = Member(name="fc1", kind=WEIGHT, idxs=(0, 1, 2, 3), root_idxs=(0, 1, 2, 3))
    with pytest.raises(ConfigError, match="has 2 entries"):
        group_scores([member], 4, {"fc1": torch.ones(2)}, (WEIGHT,))
