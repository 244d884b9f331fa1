"""Random pruning: exact sparsity, seeded, uncorrelated with magnitude, contract."""

import pytest
import torch

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.pruning import MagnitudePruning, RandomPruning, finalize_, get_masks
from slimkit.pruning.masks import layer_sparsity, overall_sparsity
from slimkit.testing import check_contract, tiny_models


def model():
    torch.manual_seed(0)
    return sk.build_model("lenet300", image_size=8)


def test_exact_sparsity_and_seeded():
    a, b, c = model(), model(), model()
    sk.prune_(a, RandomPruning(sparsity=0.8, scope="layer", seed=1))
    sk.prune_(b, RandomPruning(sparsity=0.8, scope="layer", seed=1))
    sk.prune_(c, RandomPruning(sparsity=0.8, scope="layer", seed=2))
    assert all(s == pytest.approx(0.8, abs=1e-3) for s in layer_sparsity(a).values())
    for n in get_masks(a):
        assert torch.equal(get_masks(a)[n], get_masks(b)[n])
        assert not torch.equal(get_masks(a)[n], get_masks(c)[n])


def test_global_random_and_differs_from_magnitude():
    r, m = model(), model()
    sk.prune_(r, RandomPruning(sparsity=0.9, scope="global"))
    sk.prune_(m, MagnitudePruning(sparsity=0.9, scope="global"))
    total = sum(x.numel() for x in get_masks(r).values())
    assert overall_sparsity(r, list(get_masks(r))) == round(0.9 * total) / total
    r2, m2 = model(), model()
    sk.prune_(r2, RandomPruning(sparsity=0.9, scope="layer"))
    sk.prune_(m2, MagnitudePruning(sparsity=0.9, scope="layer"))
    overlap = (get_masks(r2)["fc1"] & get_masks(m2)["fc1"]).float().mean()
    assert overlap < 0.03  # ~ 0.1 * 0.1 by chance, 0.1 if the same weights were kept


def test_bad_seed():
    with pytest.raises(ConfigError, match="seed"):
        RandomPruning(seed=-1)


def test_contract():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    check_contract(
        tiny_models()["lenet5"],
        lambda m: finalize_(sk.prune_(m, RandomPruning(sparsity=0.2))),
        x,
        min_sqnr_db=0.0,
    )
