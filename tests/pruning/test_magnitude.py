"""Magnitude pruning: exact sparsity, masks hold through AdamW fine-tuning, finalize, contract."""

import copy

import pytest
import torch

import slimkit as sk
from slimkit.errors import ConfigError, TargetError
from slimkit.pruning import MagnitudePruning, finalize_, get_masks
from slimkit.pruning.masks import MASK, attach_masks, layer_sparsity, overall_sparsity
from slimkit.testing import check_contract, tiny_models
from slimkit.training import TrainConfig, train

LAYERS = ["fc1", "fc2", "fc3"]


def lenet300():
    torch.manual_seed(0)
    return sk.build_model("lenet300", image_size=8)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.97])
def test_layer_scope_reaches_sparsity_in_every_layer(sparsity):
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=sparsity, scope="layer"))
    for name, s in layer_sparsity(model, LAYERS).items():
        n = dict(model.named_modules())[name].weight.numel()
        assert s == round(sparsity * n) / n, name


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_global_scope_reaches_sparsity_overall(sparsity):
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=sparsity, scope="global"))
    total = sum(dict(model.named_modules())[n].weight.numel() for n in LAYERS)
    assert overall_sparsity(model, LAYERS) == round(sparsity * total) / total
    # Global ranking: every surviving weight is >= every pruned one in magnitude.
    dense = lenet300()
    kept = torch.cat([dense.get_submodule(n).weight.abs()[get_masks(model)[n]] for n in LAYERS])
    gone = torch.cat([dense.get_submodule(n).weight.abs()[~get_masks(model)[n]] for n in LAYERS])
    assert kept.min() >= gone.max()
    # Layers get different sparsities under a global budget.
    assert len(set(layer_sparsity(model, LAYERS).values())) > 1


def test_targets_and_ignore_choose_layers():
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=0.8, targets=["re:fc[12]"], ignore=["fc2"]))
    assert list(get_masks(model)) == ["fc1"]
    assert layer_sparsity(model, ["fc2"])["fc2"] == 0.0


def test_masks_hold_through_adamw_finetuning(digits):
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=0.9, scope="global"))
    masks = {n: m.clone() for n, m in get_masks(model).items()}
    from slimkit.pruning.masks import reapply_masks

    cfg = TrainConfig(epochs=1, max_batches=5, weight_decay=0.1, lr=1e-2)
    train(model, digits, cfg, after_step=reapply_masks)
    for n, mask in masks.items():
        w = model.get_submodule(n).weight
        assert (w[~mask] == 0).all(), n
        if mask.any():  # (global ranking on an untrained net may empty a whole layer)
            assert (w[mask] != 0).float().mean() > 0.99  # kept weights still train
    # A user's own loop (no after_step): the forward pre-hook zeroes before each forward.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for x, y in list(digits.train)[:3]:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model(digits.example_input(2))
    for n, mask in masks.items():
        assert (model.get_submodule(n).weight[~mask] == 0).all(), n


def test_repruning_never_regrows():
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=0.5))
    first = get_masks(model)
    with torch.no_grad():  # make pruned weights look important; they must stay pruned
        for n in LAYERS:
            model.get_submodule(n).weight.add_(torch.where(first[n], 0.0, 100.0))
    sk.prune_(model, MagnitudePruning(sparsity=0.7))
    for n in LAYERS:
        assert not (get_masks(model)[n] & ~first[n]).any()
        assert layer_sparsity(model, [n])[n] == pytest.approx(0.7, abs=1e-3)


def test_finalize_leaves_real_zeros_and_no_hooks():
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=0.9))
    before = layer_sparsity(model, LAYERS)
    finalize_(model)
    assert layer_sparsity(model, LAYERS) == before
    for m in model.modules():
        assert not hasattr(m, MASK) and MASK not in m._buffers
        assert len(m._forward_pre_hooks) == 0
    assert not any("mask" in k for k in model.state_dict())


def test_masks_survive_save_load_and_reattach(tmp_path):
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=0.8))
    sk.save(model, tmp_path / "m.safetensors")
    loaded = sk.load(tmp_path / "m.safetensors")
    # load attaches the hooks itself (a loaded masked model trained and ran dense without them)
    assert all(len(loaded.get_submodule(n)._forward_pre_hooks) == 1 for n in LAYERS)
    attach_masks(loaded)  # idempotent
    for n, mask in get_masks(model).items():
        assert torch.equal(get_masks(loaded)[n], mask)
    assert all(len(loaded.get_submodule(n)._forward_pre_hooks) == 1 for n in LAYERS)


def test_deepcopy_keeps_masks_independent():
    model = lenet300()
    sk.prune_(model, MagnitudePruning(sparsity=0.5))
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.fc1.weight_mask.fill_(True)
        clone.fc1.weight.fill_(1.0)
    clone.train()(torch.zeros(1, 1, 8, 8))
    assert (clone.fc1.weight == 1.0).all()  # the copy's hook reads the copy's mask
    assert layer_sparsity(model, ["fc1"])["fc1"] == 0.5


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5"])
def test_bad_sparsity_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="sparsity must be"):
        MagnitudePruning(sparsity=bad)


def test_bad_scope_lists_choices():
    with pytest.raises(ConfigError, match=r"\['global', 'layer'\]"):
        MagnitudePruning(scope="glob")


def test_target_without_match_lists_near_matches():
    with pytest.raises(TargetError, match="fc1"):
        sk.prune_(lenet300(), MagnitudePruning(sparsity=0.5, targets=["fc_1"]))


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet", "mobilenetv2"])
def test_contract(name):
    model = tiny_models()[name]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def compress(m):
        sk.prune_(m, MagnitudePruning(sparsity=0.3, scope="global"))
        return finalize_(m)

    res = check_contract(model, compress, x, min_sqnr_db=3.0)
    assert res.onnx_max_diff is not None and res.onnx_max_diff <= 1e-4


def test_contract_unfinalized_model_roundtrips():
    model = tiny_models()["lenet5"]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    check_contract(
        model, lambda m: sk.prune_(m, MagnitudePruning(sparsity=0.5)), x, min_sqnr_db=0.0
    )
