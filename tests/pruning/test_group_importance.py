"""Group magnitude importance: a channel's score reads every tensor coupled to it."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.export.onnx import export_bytes, parity
from slimkit.models import build_model
from slimkit.pruning import ChannelPruning, prune_channels
from slimkit.pruning.criteria import group_scores, priority, weight_scores
from slimkit.pruning.group_importance import coupled_magnitude
from slimkit.pruning.structured import build_graph, channel_groups, output_layer
from slimkit.testing import randomize_batchnorm

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(build_model("resnet", image_size=8).eval())


def _groups(model):
    dg = build_graph(model, X)
    return dg, channel_groups(model, dg, {output_layer(model, X)})


def test_group_score_differs_from_filter_score_on_residual_model():
    model = _resnet()
    dg, groups = _groups(model)
    filters = weight_scores(model, 1)
    residual = [g for g in groups if sum(m.kind == "weight" for m in g.members) > 1]
    assert residual, "the zoo ResNet has residual-coupled convs"
    differs = 0
    for g in groups:
        group = coupled_magnitude(dg, g.dependency, g.channels, 1)
        alone = group_scores(g.members, g.channels, filters, priority(sk.pruning.Criterion.L1))
        assert group is not None and alone is not None and group.shape == (g.channels,)
        assert torch.isfinite(group).all() and (group > 0).all()
        differs += int(not torch.equal(torch.argsort(group), torch.argsort(alone)))
    assert differs > 0, "the group ranking should differ from the filter-only ranking somewhere"


def test_group_score_matches_torch_pruning_group_magnitude():
    import torch_pruning as tp

    model = _resnet()
    dg, groups = _groups(model)
    reference = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    for g in groups:
        ours = coupled_magnitude(dg, g.dependency, g.channels, 1)
        assert ours is not None
        torch.testing.assert_close(ours, reference(g.dependency).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_group_scope_prunes_and_exports(name, criterion):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, image_size=8).eval())
    ref = copy.deepcopy(model)
    result = prune_channels(model, ratio=0.5, criterion=criterion, example_inputs=X)
    assert result.channels_after < result.channels_before
    model.eval()
    assert model(X).shape == (4, 10)
    assert parity(model, export_bytes(model, X), X) < 1e-4
    # the filter-only scope keeps the same widths but may choose other channels
    filt = copy.deepcopy(ref)
    other = prune_channels(filt, ratio=0.5, criterion=criterion, scope="filter", example_inputs=X)
    assert other.channels_after == result.channels_after


def test_scope_is_validated_and_round_trips():
    with pytest.raises(ConfigError, match="scope"):
        ChannelPruning(scope="layer")
    cfg = ChannelPruning.from_dict({"ratio": 0.3, "scope": "filter"})
    assert cfg.to_dict()["scope"] == "filter"
