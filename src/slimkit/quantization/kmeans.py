"""K-means weight sharing (Deep Compression, Han et al. 2016) with centroid fine-tuning.

Per layer, the weights are clustered into ``2**bits`` shared values (a codebook); each weight
stores only its cluster index. Centroids start linearly spaced between min and max (the paper's
best initialisation: it keeps the rare large weights) and are refined by 1-D Lloyd iterations;
an empty cluster is re-seeded by splitting the worst one, and a layer with at most ``2**bits``
distinct values keeps them exactly.
When the layer has exact zeros (pruned), codebook entry 0 is pinned at 0.0 and the zeros are
excluded from clustering, so prune-then-quantize keeps them exactly zero; fine-tuning never
moves the pinned entry. With ``bits=1`` that leaves one value for every nonzero weight
(:class:`KMeansCollapseWarning`).

:func:`finetune_centroids` trains only the codebooks: the weight is re-derived as
``codebook[codes]`` in every forward pass, so the gradient of each centroid is the sum of the
gradients of the weights that share it; codes stay fixed.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimkit.config import SlimConfig, check_int, check_range
from slimkit.data.datasets import DataBundle
from slimkit.errors import ConfigError
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.codes import QuantCodes, quant_info, quantized_layers, weight_codes
from slimkit.quantization.common import attach, quantize_layers
from slimkit.training import LossFn, TrainConfig, train


class KMeansCollapseWarning(UserWarning):
    """bits=1 with a pinned zero: every nonzero weight of the layer shares one value."""


@dataclasses.dataclass(frozen=True)
class KMeansQuantization(SlimConfig):
    """``sk.quantize_(model, KMeansQuantization(bits=4))``: 16 shared values per layer."""

    bits: int = 4
    iters: int = 30  # Lloyd iterations (stops early when assignments settle)
    finetune_epochs: int = 0  # > 0: fine-tune the centroids on data= right after clustering
    finetune_lr: float = 1e-4
    # Seed of that fine-tuning (its TrainConfig's seed); a recipe stage gets the recipe's seed.
    finetune_seed: int = 0
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        check_int("bits", self.bits, 1, 8)
        check_int("iters", self.iters, 0, 1000)
        check_int("finetune_epochs", self.finetune_epochs, 0, 10_000)
        check_range("finetune_lr", self.finetune_lr, 0.0, 10.0, low_open=True)
        check_int("finetune_seed", self.finetune_seed, 0, 2**63 - 1)


def lloyd_1d(values: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means of ``values`` (n,): (centroids (k,) ascending, assignment (n,) int64).

    In 1-D the clusters of sorted centroids are contiguous runs of the sorted values, so each
    Lloyd step is k binary searches plus prefix sums: O(k log n) instead of O(n). With at most
    ``k`` distinct values they are the centroids (exact; spare entries repeat the largest). An
    empty cluster is re-seeded at the farthest value of the cluster with the largest squared
    error, splitting it, instead of keeping a centroid no weight uses. No randomness: the
    result is a function of ``values``.
    """
    v, _ = torch.sort(values.double())
    distinct = torch.unique_consecutive(v)
    if distinct.numel() <= k:
        centroids = torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
        return centroids, _assign(values.double(), centroids)
    csum = torch.cat([v.new_zeros(1), torch.cumsum(v, 0)])  # (n+1,) prefix sums
    csq = torch.cat([v.new_zeros(1), torch.cumsum(v * v, 0)])  # (n+1,) prefix sums of squares
    centroids = torch.linspace(float(v[0]), float(v[-1]), k, dtype=torch.float64)  # linear init
    bounds = None
    for _ in range(iters):
        # Run j holds v[edges[j]:edges[j+1]]: the values nearest centroid j.
        mids = (centroids[:-1] + centroids[1:]) / 2
        inner = torch.searchsorted(v, mids, right=True)
        edges = torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), v.numel())])
        if bounds is not None and torch.equal(edges, bounds):
            break
        bounds = edges
        lo, hi = edges[:-1], edges[1:]
        counts = (hi - lo).double()
        sums = csum[hi] - csum[lo]
        means = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            # (k,) squared error of each run around its mean; split the worst ones.
            sse = (csq[hi] - csq[lo] - sums * means).clamp_min(0)
            for j in empty:
                worst = int(torch.argmax(sse))
                if float(sse[worst]) <= 0:
                    break
                first, last = v[lo[worst]], v[hi[worst] - 1]
                far = first if means[worst] - first >= last - means[worst] else last
                means[j] = far
                sse[worst] = -1.0  # one split per cluster and step
        centroids, _ = torch.sort(means)
    return centroids, _assign(values.double(), centroids)


def _assign(values: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of each value: bucketize against the midpoints of sorted centroids."""
    if sorted_centroids.numel() == 1:
        return torch.zeros(values.shape, dtype=torch.int64)
    mids = (sorted_centroids[:-1] + sorted_centroids[1:]) / 2
    return torch.bucketize(values, mids, right=True)


def quantize_kmeans_tensor(w: torch.Tensor, bits: int, iters: int = 30) -> QuantCodes:
    """Codebook (2**bits,), codes and JSON info of one weight tensor (float32)."""
    k = 1 << bits
    flat = w.reshape(-1).double()
    zero = flat == 0
    pinned = bool(zero.any())
    free_k = k - 1 if pinned else k  # entry 0 is reserved for the pinned zero
    codebook = torch.zeros(k, dtype=torch.float64)
    codes = torch.zeros(flat.shape, dtype=torch.int64)
    nonzero = flat[~zero]
    if pinned and free_k == 1 and torch.unique(nonzero).numel() > 1:
        warnings.warn(
            "k-means with bits=1 on a layer with pruned (zero) weights keeps one shared value "
            "for every nonzero weight: codebook entry 0 is pinned at 0.0, the other is their "
            f"mean ({float(nonzero.mean()):.4g}), so e.g. [-1, 1] both become that mean. Use "
            "bits >= 2 for pruned layers, or ignore=[<layer>]",
            KMeansCollapseWarning,
            stacklevel=2,
        )
    if nonzero.numel():
        centroids, assign = lloyd_1d(nonzero, free_k, iters)
        offset = 1 if pinned else 0
        codebook[offset:] = centroids
        codes[~zero] = assign + offset
    info = {"scheme": "kmeans", "bits": bits, "pinned_zero": pinned}
    return QuantCodes(
        codes.reshape(w.shape).to(torch.int32), bits, {"codebook": codebook.to(torch.float32)}, info
    )


@QUANTIZERS.register(KMeansQuantization)
def _apply_kmeans(
    model: nn.Module, config: KMeansQuantization, data: DataBundle | None = None
) -> nn.Module:
    if config.finetune_epochs and data is None:
        raise ConfigError(
            f"finetune_epochs={config.finetune_epochs} needs training data: pass data=<DataBundle> "
            "to quantize_, or set finetune_epochs=0"
        )
    quantize_layers(
        model,
        config.targets,
        config.ignore,
        lambda _layer, w: quantize_kmeans_tensor(w, config.bits, config.iters),
    )
    if config.finetune_epochs and data is not None:
        cfg = TrainConfig(
            epochs=config.finetune_epochs, lr=config.finetune_lr, seed=config.finetune_seed
        )
        finetune_centroids(model, data, cfg)
    return model


class _SharedWeight(nn.Module):
    """Parametrization: weight = codebook[codes]; only the free centroids are trainable."""

    def __init__(self, codes: torch.Tensor, codebook: torch.Tensor, pinned: bool) -> None:
        super().__init__()
        self.pinned = pinned
        self.codes: torch.Tensor
        self.register_buffer("codes", codes.to(torch.int64))
        self.free = nn.Parameter(codebook[1:].clone() if pinned else codebook.clone())

    def codebook(self) -> torch.Tensor:
        if self.pinned:  # (1,) zero + (k-1,) free -> (k,)
            return torch.cat([self.free.new_zeros(1), self.free])
        return self.free

    def forward(self, _weight: torch.Tensor) -> torch.Tensor:
        # (k,)[codes of the weight's shape]: backward sums each centroid's weight gradients.
        return self.codebook()[self.codes]


def finetune_centroids(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
) -> nn.Module:
    """Train only the k-means codebooks of ``model`` on ``data.train``; codes stay fixed.

    Every other parameter is frozen and every buffer (BatchNorm statistics) is restored after
    training, so only ``weight_codebook`` and the weights derived from it change.
    """
    layers = {
        n: m
        for n, m in quantized_layers(model).items()
        if (quant_info(m) or {}).get("scheme") == "kmeans"
    }
    if not layers:
        raise ConfigError(
            "finetune_centroids needs k-means quantized layers, but the model has none; run "
            "sk.quantize_(model, KMeansQuantization(bits=...)) first"
        )
    cfg = cfg or TrainConfig(epochs=1, lr=1e-4)
    codes = {n: weight_codes(m) for n, m in layers.items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    for p in model.parameters():
        p.requires_grad_(False)
    shared: dict[str, _SharedWeight] = {}
    try:
        for n, m in layers.items():
            c = codes[n]
            shared[n] = _SharedWeight(c.codes, c.params["codebook"], bool(c.info["pinned_zero"]))
            parametrize.register_parametrization(m, "weight", shared[n])
        train(model, data, cfg, loss_fn=loss_fn, description="finetune centroids")
    finally:
        for m in layers.values():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        current = dict(model.named_buffers())
        with torch.no_grad():
            for n, b in buffers.items():
                if n in current:
                    current[n].copy_(b)
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, True))
    for n, m in layers.items():
        c = codes[n]
        if n in shared:
            book = shared[n].codebook().detach().to(torch.float32)
            c = QuantCodes(c.codes, c.bits, {"codebook": book}, c.info)
        attach(m, c)
    return model.eval()
