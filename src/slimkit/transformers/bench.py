"""Latency of sentence encoders on real sentence batches, interleaved across variants.

The machine is shared and noisy, so variants are timed round-robin and the median per
variant is reported; ratios within one run are what to trust. Batch 1 cycles through single
real sentences; batch B uses consecutive chunks of B sentences, each padded to its longest
member, exactly as ``embed`` does.

Two ways to take turns (``interleaved_latency(mode=...)``):
- ``"blocks"`` (default): in each round every variant serves the whole batch list in a row,
  after a short pause, as a deployed model serves a stream of requests: its weights stay in
  cache and ORT's thread pool keeps its default spinning. The pause lets the previous
  variant's spinning threads go idle before the next one is timed.
- ``"calls"``: one call of each variant in turn, with spinning OFF (with spinning on, the
  previous variant's spinning thread stole CPU from the one timed: ORT fp32 at batch 1 read
  28 ms instead of 9 ms). Every call starts with the other variants' weights in cache, which
  penalises small models: measured at batch 1 on a quiet machine, slimkit int8 1.61x vs ORT
  fp32 this way and 2.12x in blocks (1.88x in blocks with spinning off).

Every ONNX Runtime variant gets the same session options: ``threads`` intra-op threads, graph
optimization level ALL, sequential execution, spinning as the mode says.
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


MODES = ("blocks", "calls")


def ort_session(onnx_path: str | os.PathLike[str], threads: int = 2, spinning: bool = True):
    """A checked CPU InferenceSession with the options above (same for every variant)."""
    import onnxruntime as ort

    from slimkit.export.ort import load_checked

    model = load_checked(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_runner(
    onnx_path: str | os.PathLike[str], threads: int = 2, spinning: bool = True
) -> Runner:
    """int64 (B, T) ids and mask -> (B, D) float32 embeddings through :func:`ort_session`."""
    from slimkit.transformers.embed import session_runner

    return session_runner(ort_session(onnx_path, threads, spinning), onnx_path)


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
    mode: str = "blocks",
    pause_s: float = 0.1,
    per_round: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Median ms per call of each runner; every round runs every runner on every batch.

    ``mode="blocks"``: per round, each runner (after ``pause_s`` and ``warmup`` calls) runs all
    batches in a row; ``"calls"``: each batch goes to every runner in turn (runners built with
    ``spinning=False``). See the module docstring for why both exist. ``per_round``, when
    given, is filled with each runner's median ms per call of every round (name -> one value
    per round), so a caller can show how much the machine moved between rounds.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, but got {mode!r}")
    times: dict[str, list[float]] = {name: [] for name in runners}

    def timed(name: str, run: Runner, ids: np.ndarray, mask: np.ndarray) -> None:
        t0 = time.perf_counter()
        run(ids, mask)
        times[name].append((time.perf_counter() - t0) * 1000.0)

    if mode == "calls":
        for run in runners.values():
            for ids, mask in batches[:warmup]:
                run(ids, mask)
    for _ in range(rounds):
        if mode == "calls":
            for ids, mask in batches:
                for name, run in runners.items():
                    timed(name, run, ids, mask)
        else:
            for name, run in runners.items():
                time.sleep(pause_s)
                for ids, mask in batches[:warmup]:
                    run(ids, mask)
                for ids, mask in batches:
                    timed(name, run, ids, mask)
        if per_round is not None:
            for name, t in times.items():  # this round's calls are the last len(batches)
                per_round.setdefault(name, []).append(statistics.median(t[-len(batches) :]))
    return {name: statistics.median(t) for name, t in times.items()}
