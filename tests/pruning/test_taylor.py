"""Taylor importance equals |w * dL/dw| on a hand example; pruning and contract."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.pruning import TaylorPruning, finalize_, get_masks, taylor_scores
from slimkit.pruning.masks import layer_sparsity
from slimkit.testing import check_contract, tiny_models


def test_importance_equals_abs_w_times_grad_by_hand():
    # One Linear 2 -> 2 without bias, one sample x=[1, 2], label 0.
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.25]]))
    model = nn.Sequential(lin)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    # logits = W x = [0.5 - 2, 2 + 0.5] = [-1.5, 2.5]; dL/dlogits = softmax - onehot
    p = torch.softmax(torch.tensor([-1.5, 2.5]), 0)
    dlogits = p - torch.tensor([1.0, 0.0])
    grad = dlogits[:, None] * x  # (out, in) = outer(dL/dlogits, x)
    expected = (lin.weight.detach() * grad).abs()
    scores = taylor_scores(model, {"0": lin}, [(x, y)], batches=1)
    assert torch.allclose(scores["0"], expected, atol=1e-6)
    # Accumulates over batches: two identical batches give twice the score.
    scores2 = taylor_scores(model, {"0": lin}, [(x, y), (x, y)], batches=2)
    assert torch.allclose(scores2["0"], 2 * expected, atol=1e-6)
    assert lin.weight.grad is None  # .grad untouched


def test_prune_with_bundle_keeps_highest_scores(digits):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    layers = {n: model.get_submodule(n) for n in ["fc1", "fc2", "fc3"]}
    scores = taylor_scores(model, layers, digits, batches=2)
    sk.prune_(model, TaylorPruning(sparsity=0.7, batches=2), data=digits)
    for n, mask in get_masks(model).items():
        assert layer_sparsity(model, [n])[n] == pytest.approx(0.7, abs=1e-3)
        assert scores[n][mask].min() >= scores[n][~mask].max()


def test_loss_fn_hook_is_used(digits):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    calls = []

    def loss_fn(m, x, y, logits):
        calls.append(1)
        return F.cross_entropy(logits, y)

    sk.prune_(model, TaylorPruning(sparsity=0.5, batches=2), data=digits, loss_fn=loss_fn)
    assert len(calls) == 2


def test_needs_data():
    model = sk.build_model("lenet300", image_size=8)
    with pytest.raises(ConfigError, match="calibration data"):
        sk.prune_(model, TaylorPruning(sparsity=0.5))
    with pytest.raises(ConfigError, match="batches"):
        TaylorPruning(batches=0)


def test_contract(digits):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def compress(m):
        sk.prune_(m, TaylorPruning(sparsity=0.3, scope="global", batches=1), data=digits)
        return finalize_(m)

    check_contract(tiny_models()["resnet"], compress, x, min_sqnr_db=0.0)
