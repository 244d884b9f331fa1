import numpy as np
import pytest
import torch

from slimkit.errors import ConfigError, NumericsError
from slimkit.transformers import embedding_fidelity, rankdata, spearman


def test_rankdata_averages_ties():
    np.testing.assert_allclose(rankdata(np.array([10.0, 20.0, 10.0, 30.0])), [1.5, 3.0, 1.5, 4.0])


def test_spearman_monotone_and_reversed():
    x = np.arange(50, dtype=float)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # Against the closed form 1 - 6 sum d^2 / (n (n^2 - 1)) for a known permutation (no ties).
    y = np.array([2, 1, 4, 3, 5], dtype=float)
    d2 = ((np.arange(1, 6) - y) ** 2).sum()
    assert spearman(np.arange(5.0), y) == pytest.approx(1 - 6 * d2 / (5 * 24))


def test_embedding_fidelity_identical_and_noisy():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(40, 16, generator=g)
    same = embedding_fidelity(ref, ref.clone(), k=3)
    assert same.cosine_min == pytest.approx(1.0)
    assert same.spearman == pytest.approx(1.0)
    assert same.topk_agreement == 1.0 and same.top1_agreement == 1.0
    noisy = embedding_fidelity(ref, ref + 0.3 * torch.randn(40, 16, generator=g), k=3)
    assert 0.9 < noisy.cosine_mean < 0.99
    assert noisy.cosine_min < noisy.cosine_mean
    assert 0.5 < noisy.spearman < 0.99


def test_embedding_fidelity_bad_input():
    with pytest.raises(ConfigError, match="same shape"):
        embedding_fidelity(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ConfigError, match="k must be in 1..3"):
        embedding_fidelity(torch.randn(4, 3), torch.randn(4, 3), k=4)
    bad = torch.randn(4, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(NumericsError):
        embedding_fidelity(torch.randn(4, 3), bad, k=1)
