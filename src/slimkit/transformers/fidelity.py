"""Fidelity of compressed sentence embeddings against the fp32 model's.

- per-sentence cosine (mean, min) between matched rows;
- Spearman rank correlation of all pairwise similarities (upper triangle of the N x N cosine
  matrix), i.e. does the compressed model rank sentence pairs the same way;
- top-k retrieval agreement: mean overlap |topk_ref ∩ topk_new| / k of each sentence's k nearest
  neighbours (itself excluded), plus top-1 agreement.
Spearman uses average ranks for ties, computed with numpy (scipy is a dev-only extra).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from slimkit.errors import ConfigError, NumericsError


@dataclasses.dataclass(frozen=True)
class EmbeddingFidelity:
    cosine_mean: float
    cosine_min: float
    spearman: float
    topk_agreement: float
    top1_agreement: float
    k: int
    n: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (like scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values; the run's average rank is (first + last) / 2 + 1.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-length vectors."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb) or len(ra) < 2:
        raise ConfigError(
            f"spearman needs two vectors of the same length >= 2, got {len(ra)}, {len(rb)}"
        )
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _topk(sim: torch.Tensor, k: int) -> torch.Tensor:
    sim = sim.clone()
    sim.fill_diagonal_(-float("inf"))  # a sentence is not its own neighbour
    return sim.topk(k, dim=1).indices  # (N, k)


def embedding_fidelity(
    reference: torch.Tensor, approx: torch.Tensor, k: int = 5
) -> EmbeddingFidelity:
    """Compare (N, D) embeddings of the same N sentences from two models."""
    ref = torch.as_tensor(reference).double()
    new = torch.as_tensor(approx).double()
    if ref.shape != new.shape or ref.dim() != 2:
        raise ConfigError(
            f"embeddings must both be (N, D) of the same shape, got {tuple(ref.shape)} and {tuple(new.shape)}"
        )
    if not (torch.isfinite(ref).all() and torch.isfinite(new).all()):
        raise NumericsError(
            "embeddings hold NaN or inf; the compressed model is numerically broken"
        )
    n = len(ref)
    if not 1 <= k < n:
        raise ConfigError(f"k must be in 1..{n - 1} (N - 1) for N={n} sentences, but got {k}")
    ref_n = torch.nn.functional.normalize(ref, dim=1)
    new_n = torch.nn.functional.normalize(new, dim=1)
    cos = (ref_n * new_n).sum(1)  # (N,)
    sim_ref, sim_new = ref_n @ ref_n.T, new_n @ new_n.T  # (N, N)
    iu = torch.triu_indices(n, n, offset=1)
    rho = spearman(sim_ref[iu[0], iu[1]].numpy(), sim_new[iu[0], iu[1]].numpy())
    top_ref, top_new = _topk(sim_ref, k), _topk(sim_new, k)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_ref, top_new)]
    top1 = float((top_ref[:, 0] == top_new[:, 0]).double().mean())
    return EmbeddingFidelity(
        float(cos.mean()), float(cos.min()), rho, float(np.mean(overlap)), top1, k, n
    )
