"""Channel importance criteria: per-layer values, group reduction, planning, every criterion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.pruning import prune_channels
from slimkit.pruning.criteria import (
    NORM,
    WEIGHT,
    Criterion,
    Member,
    bn_scale_scores,
    group_scores,
    weight_scores,
)
from slimkit.pruning.structured import ChannelGroup, plan_removal
from slimkit.testing import randomize_batchnorm


def test_weight_scores_are_filter_norms():
    conv = nn.Sequential(nn.Conv2d(2, 3, 3))
    w = conv[0].weight.detach()
    l1 = weight_scores(conv, 1)["0"]
    l2 = weight_scores(conv, 2)["0"]
    assert torch.allclose(l1, w.abs().sum((1, 2, 3)))
    assert torch.allclose(l2, w.pow(2).sum((1, 2, 3)).sqrt())
    bn = nn.Sequential(nn.BatchNorm2d(3))
    bn[0].weight.data = torch.tensor([-2.0, 0.5, 1.0])
    assert torch.equal(bn_scale_scores(bn)["0"], torch.tensor([2.0, 0.5, 1.0]))


def test_group_scores_average_coupled_layers_in_root_space():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([30.0, 10.0, 20.0])}
    members = [
        Member("a", WEIGHT, (0, 1, 2), (0, 1, 2)),
        Member("b", WEIGHT, (0, 1, 2), (2, 0, 1)),  # b's channel 0 is the root's channel 2
        Member("bn", NORM, (0, 1, 2), (0, 1, 2)),
    ]
    out = group_scores(members, 3, scores, (WEIGHT,))
    assert torch.allclose(out, torch.tensor([(1 + 10) / 2, (2 + 20) / 2, (3 + 30) / 2]))
    assert group_scores(members, 3, scores, (NORM,)) is None


def test_plan_removal_layerwise_and_global():
    groups = [ChannelGroup("a", 4, []), ChannelGroup("b", 2, [])]
    scores = [torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.tensor([0.1, 0.2])]
    assert plan_removal(groups, scores, ratio=0.5, global_=False) == {"a": [1, 3], "b": [0]}
    # global, raw scores: the 3 lowest are b0, b1, a1 but b keeps 1 channel (cap)
    plan = plan_removal(groups, scores, ratio=0.5, global_=True, normalize=False)
    assert plan == {"b": [0], "a": [1, 3]}
    plan = plan_removal(groups, scores, ratio=0.5, global_=True, min_channels=2, normalize=False)
    assert plan == {"a": [1, 3]}  # b may not go below 2; budget floor(0.5*6)=3 cannot be met


@pytest.mark.parametrize("criterion", [c.value for c in Criterion])
def test_every_criterion_prunes_resnet_to_ratio(criterion, digits):
    model = randomize_batchnorm(build_model("resnet", image_size=8).eval())
    result = prune_channels(model, ratio=0.5, criterion=criterion, data=digits, calib_batches=1)
    for g in result.groups.values():
        assert g["after"] == g["before"] - math.floor(0.5 * g["before"])
    x, _ = next(iter(digits.test))
    assert torch.isfinite(model(x)).all()


def test_bn_scale_needs_a_batchnorm():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="bn_scale needs a BatchNorm"):
        prune_channels(
            build_model("lenet5", image_size=8), ratio=0.5, criterion="bn_scale", example_inputs=x
        )


def test_round_to_keeps_multiples():
    groups = [ChannelGroup("a", 24, []), ChannelGroup("b", 16, []), ChannelGroup("c", 6, [])]
    scores = [torch.arange(24.0), torch.arange(16.0), torch.arange(6.0)]
    plan = plan_removal(groups, scores, ratio=0.4, global_=False, round_to=8)
    # a: remove 9 -> keep 15 -> rounded up to 16 (remove 8); b: keep 10 -> 16 (nothing);
    # c: smaller than round_to -> nothing
    assert plan == {"a": list(range(8))}
    plan = plan_removal(groups, scores, ratio=0.5, global_=True, round_to=4, normalize=False)
    assert all((g.channels - len(plan.get(g.root, []))) % 4 == 0 for g in groups[:2])


def test_round_mode_nearest_keeps_the_nearest_multiple_within_the_cap():
    groups = [ChannelGroup("a", 16, []), ChannelGroup("b", 16, []), ChannelGroup("c", 6, [])]
    scores = [torch.arange(16.0), torch.arange(16.0).flip(0), torch.arange(6.0)]
    # ratio 0.45: remove 7 of 16 -> keep 9; up keeps 12, nearest keeps 8 (the 8 lowest scores)
    up = plan_removal(groups[:1], scores[:1], ratio=0.45, global_=False, round_to=4)
    assert up == {"a": list(range(4))}
    near = plan_removal(groups, scores, ratio=0.45, global_=False, round_to=4, round_mode="nearest")
    assert near["a"] == list(range(8)) and near["b"] == list(range(8, 16))
    assert near["c"] == [0, 1]  # 6 - 2 = 4 kept is already a multiple
    # max_layer_ratio caps the removal at 7: nearest (remove 8) falls back to rounding up
    capped = plan_removal(
        groups[:1],
        scores[:1],
        ratio=0.45,
        global_=False,
        round_to=4,
        round_mode="nearest",
        max_layer_ratio=0.45,
    )
    assert capped == {"a": list(range(4))}
    # global: a group's nearest rounding adds its next-lowest channels
    glob = plan_removal(
        groups[:2],
        scores[:2],
        ratio=0.45,
        global_=True,
        round_to=4,
        normalize=False,
        round_mode="nearest",
    )
    assert all((16 - len(v)) % 4 == 0 for v in glob.values())
