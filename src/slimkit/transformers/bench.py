"""Latency of sentence encoders on real sentence batches, interleaved across variants.

The machine is shared and noisy, so variants are timed round-robin (one call of each per
round) and the median per variant is reported; ratios within one run are what to trust.
Batch 1 cycles through single real sentences; batch B uses consecutive chunks of B sentences,
each padded to its longest member, exactly as ``embed`` does.

Every ONNX Runtime variant gets the same session options: ``threads`` intra-op threads, graph
optimization level ALL, sequential execution, and thread-pool spinning OFF. With spinning on
(ORT's default) a session's worker keeps spinning after its call returns; interleaving several
sessions in one process on 2 cores then lets the previous variant's spinning thread steal CPU
from the one being timed (measured: ORT fp32 at batch 1 went from ~9 ms to ~28 ms).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Runner = Callable[[np.ndarray, np.ndarray], Any]


def ort_session(onnx_path: str | os.PathLike[str], threads: int = 2):
    """A checked CPU InferenceSession with the options above (same for every variant)."""
    import onnxruntime as ort

    from slimkit.export.ort import load_checked

    model = load_checked(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_runner(onnx_path: str | os.PathLike[str], threads: int = 2) -> Runner:
    """int64 (B, T) ids and mask -> (B, D) float32 embeddings through :func:`ort_session`."""
    sess = ort_session(onnx_path, threads)
    names = [i.name for i in sess.get_inputs()]

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return sess.run(None, dict(zip(names, (ids, mask))))[0]

    return run


def torch_runner(module: torch.nn.Module, threads: int = 2) -> Runner:
    module.eval()

    def run(ids: np.ndarray, mask: np.ndarray):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return module(torch.from_numpy(ids), torch.from_numpy(mask))
        finally:
            torch.set_num_threads(old)

    return run


def make_batches(
    tokenizer: Any, sentences: Sequence[str], batch: int, count: int, max_length: int = 256
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` batches of ``batch`` consecutive sentences (wrapping around), as int64 arrays."""
    from slimkit.transformers.embed import tokenize

    out = []
    for k in range(count):
        start = (k * batch) % len(sentences)
        chunk = [sentences[(start + j) % len(sentences)] for j in range(batch)]
        enc = tokenize(tokenizer, chunk, max_length)
        out.append((enc["input_ids"].numpy(), enc["attention_mask"].numpy()))
    return out


def interleaved_latency(
    runners: dict[str, Runner],
    batches: list[tuple[np.ndarray, np.ndarray]],
    rounds: int = 3,
    warmup: int = 2,
) -> dict[str, float]:
    """Median ms per call of each runner; every round runs every runner on every batch."""
    for run in runners.values():
        for ids, mask in batches[:warmup]:
            run(ids, mask)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for ids, mask in batches:
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(ids, mask)
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}
