"""Learned channel gates: the gate module, spec round trip, gate-ranked pruning, clean removal."""

from __future__ import annotations

import copy

import torch
from torch import nn

import slimkit as sk
from slimkit.models import build_model
from slimkit.pruning import ChannelGate, GatePruning
from slimkit.pruning.gates import gate_sites, insert_gates, remove_gates
from slimkit.testing import check_contract


def test_gate_shapes_and_near_identity_start():
    gate = ChannelGate(8, 2)
    x = torch.randn(3, 8, 4, 4)
    y = gate(x)
    assert y.shape == x.shape and gate.last.shape == (3, 8)
    assert torch.allclose(gate.last, torch.full((3, 8), torch.sigmoid(torch.tensor(3.0)).item()))
    assert gate(torch.randn(3, 8)).shape == (3, 8)  # Linear outputs (B, C)


def test_gated_model_saves_and_loads(tmp_path):
    model = build_model("resnet", image_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    sites = gate_sites(model, x, ["layers.0.conv1", "stem.0"])
    assert sites == {"layers.0.conv1": "layers.0.bn1", "stem.0": "stem.1"}
    inserted = insert_gates(model, sites, {"layers.0.conv1": 16, "stem.0": 16}, reduction=4)
    assert isinstance(model.layers[0].bn1[1], ChannelGate)
    sk.save(model, tmp_path / "g.safetensors")
    loaded = sk.load(tmp_path / "g.safetensors")
    assert torch.equal(loaded(x), model(x))
    remove_gates(model, inserted)
    assert isinstance(model.layers[0].bn1, nn.BatchNorm2d)


def test_ratio_zero_leaves_the_model_exactly_as_it_was(digits):
    model = build_model("resnet", image_size=8, seed=0).eval()
    ref = copy.deepcopy(model)
    sk.prune_(model, GatePruning(ratio=0.0, train={"epochs": 1, "max_batches": 3}), data=digits)
    assert not any(isinstance(m, ChannelGate) for m in model.modules())
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(p.requires_grad for p in model.parameters())


def test_gate_pruning_passes_contract(digits):
    model = build_model("mobilenetv2", image_size=8, seed=0).eval()
    x, _ = next(iter(digits.test))
    cfg = GatePruning(ratio=0.5, max_layer_ratio=0.75, train={"epochs": 1, "max_batches": 4})

    def compress(m):
        sk.prune_(m, cfg, data=digits)

    check_contract(model, compress, x[:4], onnx_atol=1e-4)


def test_gate_pruning_removes_requested_fraction(digits):
    model = build_model("lenet5", image_size=8, seed=0)
    sk.prune_(model, GatePruning(ratio=0.5, train={"epochs": 1, "max_batches": 3}), data=digits)
    removed = sum(model.slimkit_channel_history[-1]["removed"].values())
    assert removed == (20 + 50 + 500) // 2
    assert model.fc2.out_features == 10
