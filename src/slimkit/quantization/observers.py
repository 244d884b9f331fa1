"""Range observers for int8 activations: min-max, percentile, MSE and entropy (KL).

An observer sees float activations during calibration and returns ``(scale, zero_point)`` for
an affine uint8/int8 grid ``q = clamp(round(x / scale) + zp, qmin, qmax)``.

- ``minmax``: the exact running min and max over all calibration data.
- ``percentile``: clip at the ``p``-th / ``(100-p)``-th percentile (outliers are clipped).
- ``mse``: the clipping range (a shrink of min-max) that minimises the mean squared
  quantize-dequantize error on the observed values.
- ``entropy``: TensorRT-style calibration, the range whose 256-level histogram has the smallest
  KL divergence from the observed (clipped) histogram.

Exact min/max are tracked over every value; percentile/MSE/entropy work on a seeded uniform
subsample of at most ``max_samples`` values per observer (bounded memory on any calibration
size). Every range contains 0 (so zero padding and ReLU zeros are exact) and an all-zero or
constant input still gives a finite, positive scale.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch

from slimkit.errors import NumericsError

UINT8 = (0, 255)  # activations: asymmetric uint8 (ORT's fast U8S8 path on x86)
INT8_SYM = (-127, 127)  # weights: symmetric int8, zero point 0


class ObserverKind(str, enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"


def qparams_from_range(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    """Affine ``(scale, zero_point)`` covering ``[min(lo, 0), max(hi, 0)]`` on ``qmin..qmax``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NumericsError(f"cannot quantize a tensor whose range is not finite: [{lo}, {hi}]")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    # All-zero input: any scale represents 0 exactly; 1.0 keeps everything finite.
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    scale = float(np.float32(max(scale, 1e-12)))
    zp = int(min(max(round(qmin - lo / scale), qmin), qmax))
    return scale, zp


def fake_quant_np(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    return (np.clip(np.rint(x / scale) + zp, qmin, qmax) - zp) * scale


class Observer:
    """Accumulates activation statistics; :meth:`qparams` returns the calibrated grid."""

    def __init__(
        self,
        kind: ObserverKind | str = ObserverKind.MINMAX,
        *,
        percentile: float = 99.99,
        max_samples: int = 1 << 18,
        seed: int = 0,
    ) -> None:
        self.kind = ObserverKind(kind)
        self.percentile = percentile
        self.max_samples = max_samples
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0
        self._samples: list[np.ndarray] = []
        self._kept = 0
        self._rng = np.random.default_rng(seed)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().float().reshape(-1)
        if flat.numel() == 0:
            return
        if not torch.isfinite(flat).all():
            raise NumericsError("an observed activation holds NaN or inf; check the model/input")
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        self.count += flat.numel()
        if self.kind is ObserverKind.MINMAX:
            return
        arr = flat.numpy()
        # Keep a uniform subsample: each batch contributes in proportion to its size.
        budget = self.max_samples // 8
        if arr.size > budget:
            arr = self._rng.choice(arr, budget, replace=False)
        self._samples.append(arr.copy())
        self._kept += arr.size
        if self._kept > 2 * self.max_samples:  # thin out old + new evenly
            allv = np.concatenate(self._samples)
            self._samples = [self._rng.choice(allv, self.max_samples, replace=False)]
            self._kept = self.max_samples

    def observed_range(self) -> tuple[float, float]:
        if self.count == 0:
            raise NumericsError("observer saw no data; run calibration batches through the model")
        if self.kind is ObserverKind.MINMAX:
            return self.lo, self.hi
        values = np.concatenate(self._samples).astype(np.float64)
        if self.kind is ObserverKind.PERCENTILE:
            lo = float(np.percentile(values, 100.0 - self.percentile))
            hi = float(np.percentile(values, self.percentile))
            return lo, hi
        if self.kind is ObserverKind.MSE:
            return _mse_range(values, self.lo, self.hi)
        return _entropy_range(values, self.lo, self.hi)

    def qparams(self, qmin: int = UINT8[0], qmax: int = UINT8[1]) -> tuple[float, int]:
        lo, hi = self.observed_range()
        return qparams_from_range(lo, hi, qmin, qmax)


def _shrinks(steps: int = 80, smallest: float = 0.01) -> np.ndarray:
    """Candidate fractions of the min-max range, dense near 1 and down to ``smallest``."""
    return np.geomspace(1.0, smallest, steps)


def _mse_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Shrink ``[lo, hi]`` by the factor with the least quantize-dequantize MSE."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi <= lo:
        return lo, hi
    best, best_err = (lo, hi), math.inf
    for a in _shrinks():
        s, z = qparams_from_range(lo * a, hi * a, *UINT8)
        err = float(np.mean((fake_quant_np(values, s, z, *UINT8) - values) ** 2))
        if err < best_err - 1e-15:
            best, best_err = (lo * a, hi * a), err
    return best


def _entropy_range(
    values: np.ndarray, lo: float, hi: float, bins: int = 2048, levels: int = 256
) -> tuple[float, float]:
    """KL calibration (Migacz 2017): the window whose 256-level version loses least information.

    Windows keep the zero bin and shrink both sides by the same fraction; values outside are
    clipped into the edge bins (P); Q merges P into ``levels`` buckets and spreads each bucket's
    mass evenly over its non-empty source bins.
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi <= lo:
        return lo, hi
    hist, _ = np.histogram(values, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    zero_bin = int(round(-lo / (hi - lo) * bins))
    width = (hi - lo) / bins
    best, best_kl = (lo, hi), math.inf
    for a in _shrinks():
        start = max(0, int(round(zero_bin * (1 - a))))
        stop = min(bins, int(round(zero_bin + (bins - zero_bin) * a)))
        if stop - start < levels:
            break
        p = hist[start:stop].copy()
        p[0] += hist[:start].sum()
        p[-1] += hist[stop:].sum()
        edges = np.linspace(0, len(p), levels + 1).astype(int)[:-1]  # bucket starts
        sums = np.add.reduceat(p, edges)  # (levels,)
        nonzero = np.add.reduceat((p > 0).astype(np.float64), edges)
        bucket = np.repeat(np.arange(levels), np.diff(np.append(edges, len(p))))
        q = np.where(p > 0, (sums / np.maximum(nonzero, 1))[bucket], 0.0)
        ps, qs = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
        mask = ps > 0
        kl = float(np.sum(ps[mask] * np.log(ps[mask] / np.maximum(qs[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = (lo + start * width, lo + stop * width), kl
    return best


def weight_qparams(
    weight: torch.Tensor, per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weight grid: ``scale = absmax / 127`` per output channel (axis 0).

    Returns ``scale (out,)`` float32 and ``zero_point (out,)`` int32 (all zeros); per-tensor
    gives shape ``(1,)``. An all-zero channel gets scale 1.0 (finite, zero stays exact).
    """
    w = weight.detach().float()
    absmax = w.abs().reshape(w.shape[0], -1).amax(1) if per_channel else w.abs().max().reshape(1)
    scale = torch.where(absmax > 0, absmax / INT8_SYM[1], torch.ones_like(absmax))
    return scale.clamp_min(1e-12), torch.zeros_like(scale, dtype=torch.int32)
