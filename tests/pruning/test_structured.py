"""Structured channel pruning with real removal: exactness, coupling, contract, MACs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError, TargetError
from slimkit.export.onnx import export_bytes, parity
from slimkit.metrics import count_macs
from slimkit.models import build_model
from slimkit.pruning import ChannelPruning, prune_channels
from slimkit.testing import check_contract, randomize_batchnorm, tiny_models

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _out_channels(model: nn.Module) -> dict[str, int]:
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_zoo_models_prune_to_ratio_and_pass_contract(name):
    model = randomize_batchnorm(tiny_models()[name])
    results = []

    def compress(m):
        results.append(prune_channels(m, ratio=0.5, example_inputs=X))

    # Loose fidelity (channels are really removed), exact save/load, ONNX parity.
    res = check_contract(model, compress, X, onnx_atol=1e-4)
    assert res.roundtrip_max_diff == 0.0
    result = results[0]
    assert result.groups, "nothing was pruned"
    for g in result.groups.values():
        assert g["after"] == g["before"] - math.floor(0.5 * g["before"])
    assert result.channels_after == result.channels_before - sum(
        math.floor(0.5 * g["before"]) for g in result.groups.values()
    )


def test_pruned_layers_really_shrink_and_classifier_is_kept():
    model = randomize_batchnorm(build_model("resnet", image_size=8).eval())
    before = _out_channels(model)
    macs0 = count_macs(model, X)
    sk.prune_(model, ChannelPruning(ratio=0.5), example_inputs=X)
    after = _out_channels(model)
    assert after["fc"] == 10 and model.fc.in_features == 32
    assert after["stem.0"] == 8 and after["layers.2.conv1"] == 32
    assert all(after[n] == before[n] // 2 for n in before if n != "fc")
    # BN feature counts follow their convs
    assert model.layers[0].bn1.num_features == 8
    # Convs are ~quadratic in width: MACs fall to ~1/4
    assert count_macs(model, X) < 0.27 * macs0


def test_macs_fall_by_the_exact_expected_amount_lenet5():
    model = build_model("lenet5", image_size=8).eval()
    sk.prune_(model, ChannelPruning(ratio=0.5), example_inputs=X)
    # 8x8 input, pad 2: conv1 (10 of 20 filters) at 8x8, conv2 (25 of 50, 10 inputs) at 4x4,
    # fc1 (250 of 500 rows, 25*2*2 inputs), fc2 (10 rows, 250 inputs).
    expected = 10 * 1 * 25 * 64 + 25 * 10 * 25 * 16 + 25 * 4 * 250 + 250 * 10
    assert count_macs(model, X[:1]) == expected


def test_removing_internal_channels_equals_zeroing_them_after_bn_relu():
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model("resnet", image_size=8).eval())
    original = copy.deepcopy(model)
    targets = ["layers.0.conv1", "layers.1.conv1", "layers.2.conv1"]
    result = prune_channels(model, ratio=0.5, targets=targets, example_inputs=X)
    assert set(result.removed) == set(targets)
    hooks = []
    for conv_name, idxs in result.removed.items():
        relu = original.get_submodule(conv_name.replace("conv1", "relu1"))

        def zero(_m, _i, out, idxs=idxs):
            out = out.clone()
            out[:, idxs] = 0.0  # the removed channels' outputs after BN + ReLU
            return out

        hooks.append(relu.register_forward_hook(zero))
    with torch.no_grad():
        diff = (original(X) - model(X)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_removing_channels_whose_bn_output_is_zero_is_exact(name):
    """Channels coupled across residual adds: zero gamma and beta of every BN in the group, so the
    channel is exactly 0 everywhere; removing it must not change the output (BN shift included)."""
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, image_size=8).eval())
    probe = copy.deepcopy(model)
    planned = prune_channels(probe, ratio=0.25, criterion="l1", example_inputs=X)
    with torch.no_grad():
        for root, idxs in planned.removed.items():
            for layer in planned.groups[root]["layers"]:
                m = model.get_submodule(layer)
                if isinstance(m, nn.BatchNorm2d):
                    m.weight[idxs] = 0.0
                    m.bias[idxs] = 0.0
    reference = copy.deepcopy(model)
    result = prune_channels(model, ratio=0.25, criterion="bn_scale", example_inputs=X)
    assert result.removed == planned.removed
    with torch.no_grad():
        diff = (reference(X) - model(X)).abs().max().item()
    assert diff < 1e-5


class CatNet(nn.Module):
    """A 1-output-channel conv concatenated with a 6-channel conv, BN over the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 1, 3, padding=1)
        self.conv_b = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(7)
        self.conv_c = nn.Conv2d(7, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.conv_a(x)), torch.relu(self.conv_b(x))], 1)  # (B, 7, H, W)
        y = torch.relu(self.bn(y))
        return self.fc(self.flatten(self.pool(torch.relu(self.conv_c(y)))))


@pytest.mark.parametrize("global_", [False, True])
def test_one_channel_conv_and_concat_survive(global_):
    torch.manual_seed(0)
    model = randomize_batchnorm(CatNet().eval())
    prune_channels(model, ratio=0.9, global_=global_, example_inputs=X)
    assert model.conv_a.out_channels == 1  # never 0
    assert model.conv_b.out_channels >= 1
    cat = model.conv_a.out_channels + model.conv_b.out_channels
    assert model.bn.num_features == cat and model.conv_c.in_channels == cat
    assert model.fc.out_features == 10 and model.fc.in_features == model.conv_c.out_channels
    assert model(X).shape == (4, 10)
    assert parity(model, export_bytes(model, X), X) < 1e-4


def test_min_channels_is_respected_in_global_mode():
    model = randomize_batchnorm(build_model("resnet", image_size=8).eval())
    result = prune_channels(model, ratio=0.9, global_=True, min_channels=4, example_inputs=X)
    assert all(g["after"] >= 4 for g in result.groups.values())
    assert all(c >= 4 for c in _out_channels(model).values())


def test_global_mode_removes_the_requested_total():
    model = randomize_batchnorm(build_model("mobilenetv2", image_size=8).eval())
    result = prune_channels(model, ratio=0.4, global_=True, example_inputs=X)
    assert result.channels_before - result.channels_after == math.floor(
        0.4 * result.channels_before
    )
    assert model(X).shape == (4, 10)


def test_targets_and_ignore_choose_groups():
    model = build_model("resnet", image_size=8).eval()
    result = prune_channels(model, ratio=0.5, targets=["layers.1.conv1"], example_inputs=X)
    assert list(result.removed) == ["layers.1.conv1"] and model.layers[1].conv1.out_channels == 16
    assert model.stem[0].out_channels == 16
    # Ignoring one layer of a residual group keeps the whole group's channels.
    model = build_model("resnet", image_size=8).eval()
    prune_channels(model, ratio=0.5, ignore=["layers.0.conv2"], example_inputs=X)
    assert model.stem[0].out_channels == 16 and model.layers[0].conv2.out_channels == 16
    assert model.layers[0].conv1.out_channels == 8
    with pytest.raises(TargetError, match="near matches"):
        prune_channels(build_model("resnet", image_size=8), ratio=0.5, targets=["layers.0.conv9"])


def test_history_is_saved_with_the_model(tmp_path):
    model = build_model("lenet5", image_size=8).eval()
    sk.prune_(model, ChannelPruning(ratio=0.25), data=X)
    sk.save(model, tmp_path / "m.safetensors")
    loaded = sk.load(tmp_path / "m.safetensors")
    assert loaded.slimkit_channel_history[0]["removed"] == {"fc1": 125, "conv2": 12, "conv1": 5}
    assert torch.equal(loaded(X), model(X))


def test_config_validation_messages():
    with pytest.raises(ConfigError, match=r"ratio must be in \[0.0, 1.0\), but got 1.2"):
        ChannelPruning(ratio=1.2)
    with pytest.raises(ConfigError, match="criterion must be one of"):
        ChannelPruning(criterion="l3")
    with pytest.raises(ConfigError, match="min_channels"):
        ChannelPruning(min_channels=0)
    cfg = ChannelPruning.from_dict({"ratio": 0.3, "criterion": "taylor", "targets": ["fc1"]})
    assert cfg.to_dict()["criterion"] == "taylor" and cfg.targets == ("fc1",)


def test_data_criterion_without_data_is_a_config_error():
    with pytest.raises(ConfigError, match="needs data"):
        sk.prune_(build_model("lenet5", image_size=8), ChannelPruning(criterion="activation"))


def test_pruning_a_model_in_train_mode_leaves_batchnorm_statistics_alone():
    # output_layer's probe forward ran in the model's mode: in train mode it moved the
    # running statistics and counted a batch.
    from slimkit.pruning.structured import output_layer

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).train()
    x = torch.randn(4, 3, 10, 10) * 5 + 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert output_layer(model, x) == "8"
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    sk.prune_(model, ChannelPruning(ratio=0.25), example_inputs=x)
    assert model.training
    assert int(model[1].num_batches_tracked) == 0
    assert model[1].running_mean.abs().max() == 0.0 and model[4].running_var.eq(1.0).all()
