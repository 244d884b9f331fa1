"""Latency of PyTorch eager and ONNX Runtime: warm-up, then the median of N timed runs.

Results record batch size, thread count and the runner, so figures measured on a shared,
noisy machine can be compared as ratios within one run.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from slimkit.config import check_threads


@dataclasses.dataclass(frozen=True)
class Latency:
    runner: str  # "torch" | "ort"
    batch: int
    threads: int
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _time(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    if runs < 1:
        from slimkit.errors import ConfigError

        raise ConfigError(f"runs must be at least 1, but got {runs}; pass --runs 1 or more")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _check_batch(batch: object) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        from slimkit.errors import ConfigError

        raise ConfigError(
            f"batch must be a batch size of at least 1, but got {batch!r}; pass e.g. 1 or 64"
        )
    return batch


def _summary(runner: str, batch: int, threads: int, times: list[float]) -> Latency:
    times_sorted = sorted(times)
    # Nearest rank: the ceil(0.9 n)-th smallest (integer arithmetic; the 9th of 10, not the max).
    p90 = times_sorted[-(-9 * len(times_sorted) // 10) - 1]
    return Latency(runner, batch, threads, statistics.median(times), p90, len(times))


@torch.no_grad()
def torch_latency(
    model: nn.Module,
    example: torch.Tensor,
    batch: int = 1,
    *,
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 30,
) -> Latency:
    """Median eager latency of ``model`` on a batch built by repeating ``example[:1]``.

    ``threads=None`` uses torch's current intra-op thread count (and reports it)."""
    _check_batch(batch)
    if threads is not None:
        check_threads(threads)
    x = example[:1].repeat(batch, *([1] * (example.dim() - 1)))
    old = torch.get_num_threads()
    n = old if threads is None else threads
    torch.set_num_threads(n)
    try:
        model.eval()
        times = _time(lambda: model(x), warmup, runs)
    finally:
        torch.set_num_threads(old)
    return _summary("torch", batch, n, times)


def ort_latency(
    onnx_path: str | os.PathLike[str],
    example: torch.Tensor | np.ndarray,
    batch: int = 1,
    *,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 30,
) -> Latency:
    """Median ONNX Runtime latency of the model file at ``onnx_path``."""
    from slimkit.export.ort import make_session

    _check_batch(batch)
    sess = make_session(onnx_path, threads=threads)  # checks threads (ORT reads 0 as all cores)
    arr = example.detach().numpy() if isinstance(example, torch.Tensor) else example
    x = np.repeat(arr[:1], batch, axis=0).astype(np.float32)
    name = sess.get_inputs()[0].name
    times = _time(lambda: sess.run(None, {name: x}), warmup, runs)
    return _summary("ort", batch, threads, times)
