"""Low-rank decomposition: the dense model vs each slimkit method, side by side.

For LeNet-5 and the small ResNet on mnist5k (4,000 train / 1,000 test images, 28x28), per seed:
train the dense model to near plateau (``DENSE_EPOCHS``; the weights are cached per seed as
safetensors in a temp folder so reruns are cheap), then for each method at 2-3 ranks decompose a
copy and give it the same recovery: ``FT_EPOCHS`` epochs of logit distillation from the dense
model, then BatchNorm statistics re-measured on the calibration images. A control row gives the
undecomposed dense model the same recovery, to show what the retraining alone changes:

* ``svd``: Linear layers, rank by kept energy;
* ``tucker``: Tucker-2 of every eligible Conv2d (tensorly), rank ratio per channel mode;
* ``cp``: CP of every eligible Conv2d (tensorly ALS), ratio of the equal-params rank;
* ``depthwise``: depthwise-separable replacement fitted by least squares on calibration data.

Reported: params, FLOPs (torch.utils.flop_counter) and FLOPs ratio, bytes of the safetensors
file written, ORT latency (batch 1, median, 1 thread, measured on the ONNX file written for seed
0), accuracy mean/std over 3 seeds and its change in percentage points (mean +- std of the
per-seed difference to the dense model of the same seed). Target (issue 7):
>= 2x fewer FLOPs at <= 1 pp accuracy loss (Jaderberg et al. 2014: 2.5x with no loss).
Writes benchmarks/results/decomposition.json.

Run: ``.venv/bin/python benchmarks/decomposition.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from slimkit import atomic
from slimkit.data import load_dataset
from slimkit.decomposition import (
    CPDecomposition,
    DepthwiseSeparable,
    RankSpec,
    Recovery,
    SVDDecomposition,
    TuckerDecomposition,
    decompose_,
)
from slimkit.export.onnx import to_onnx
from slimkit.io import load, save
from slimkit.metrics import count_flops, count_params, file_bytes, ort_latency
from slimkit.models import build_model
from slimkit.training import TrainConfig, evaluate_accuracy, train

RESULTS = Path(__file__).parent / "results" / "decomposition.json"
DENSE_EPOCHS = 10  # test accuracy is flat from epoch ~9 (ResNet 97.9-98.2 %, LeNet-5 97.4-97.8 %)
DENSE_LR = 2e-3
FT_EPOCHS = 3  # full epochs of 63 batches of 64 for every method
FT_LR = 2e-3
CACHE = Path(tempfile.gettempdir()) / "slimkit-bench-decomposition"


def methods(rec: Recovery) -> list[tuple[str, str, Any]]:
    """(method, setting, config) at 2-3 ranks each (depthwise has no rank); the control row
    runs the same recovery on the undecomposed model (SVD at full rank replaces nothing)."""
    return [
        ("control", "recovery only", SVDDecomposition(rank=RankSpec("ratio", 1.0), recovery=rec)),
        ("svd", "energy 0.9", SVDDecomposition(rank=RankSpec("energy", 0.9), recovery=rec)),
        ("svd", "energy 0.7", SVDDecomposition(rank=RankSpec("energy", 0.7), recovery=rec)),
        ("tucker", "ratio 0.5", TuckerDecomposition(rank=RankSpec("ratio", 0.5), recovery=rec)),
        ("tucker", "ratio 0.4", TuckerDecomposition(rank=RankSpec("ratio", 0.4), recovery=rec)),
        ("tucker", "ratio 0.3", TuckerDecomposition(rank=RankSpec("ratio", 0.3), recovery=rec)),
        (
            "cp",
            "ratio 0.25",
            CPDecomposition(rank=RankSpec("ratio", 0.25), n_iter_max=50, recovery=rec),
        ),
        (
            "cp",
            "ratio 0.12",
            CPDecomposition(rank=RankSpec("ratio", 0.12), n_iter_max=50, recovery=rec),
        ),
        ("depthwise", "ls-fit", DepthwiseSeparable(recovery=rec)),
    ]


def measure_structure(model: torch.nn.Module, x: torch.Tensor, runs: int) -> dict[str, Any]:
    """Params, FLOPs, bytes of the file written, ORT latency of the ONNX file written."""
    with tempfile.TemporaryDirectory() as tmp:
        st, onnx_path = Path(tmp) / "m.safetensors", Path(tmp) / "m.onnx"
        save(model, st)
        to_onnx(model, onnx_path, x)
        lat = ort_latency(onnx_path, x, 1, threads=1, runs=runs)
        return {
            "params": count_params(model),
            "flops": count_flops(model, x),
            "bytes": file_bytes(st),
            "onnx_bytes": file_bytes(onnx_path),
            "ort_ms": lat.median_ms,
        }


def dense_model(name: str, seed: int, data: Any, max_batches: int | None) -> tuple[Any, bool]:
    """The trained dense model of ``seed``, from the safetensors cache when it is there."""
    path = CACHE / f"{name}_seed{seed}_epochs{DENSE_EPOCHS}_lr{DENSE_LR:g}.safetensors"
    if max_batches is None and path.exists():
        return load(path), True
    torch.manual_seed(seed)
    dense = build_model(name, image_size=28)
    cfg = TrainConfig(epochs=DENSE_EPOCHS, lr=DENSE_LR, seed=seed, max_batches=max_batches)
    train(dense, data, cfg)
    if max_batches is None:  # never cache a smoke run's model
        CACHE.mkdir(parents=True, exist_ok=True)
        save(dense, path)
    return dense, False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 seed, few batches: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared; ratios within one run are what count
    seeds = [0] if args.quick else [0, 1, 2]
    max_batches = 5 if args.quick else None
    runs = 10 if args.quick else 200
    data = load_dataset("mnist5k", batch_size=64)
    x = data.example_input(1)
    results: dict[str, Any] = {
        "seeds": seeds,
        "dense_epochs": DENSE_EPOCHS,
        "dense_lr": DENSE_LR,
        "ft_epochs": 1 if args.quick else FT_EPOCHS,
        "ft_lr": FT_LR,
        "dense_cached": [],
        "quick": args.quick,
        "models": {},
    }
    t_start = time.perf_counter()
    for name in ("lenet5", "resnet"):
        rows: dict[str, dict[str, Any]] = {}
        for seed in seeds:
            dense, cached = dense_model(name, seed, data, max_batches)
            results["dense_cached"].append(
                f"{name} seed {seed}: {'cache' if cached else 'trained'}"
            )
            row = rows.setdefault("dense", {"method": "dense", "setting": "-", "acc": []})
            row["acc"].append(evaluate_accuracy(dense, data.test))
            if seed == seeds[0]:
                row.update(measure_structure(dense, x, runs))
            rec = Recovery(
                mode="distill",
                epochs=results["ft_epochs"],
                lr=FT_LR,
                seed=seed,
                max_batches=max_batches,
            )
            for method, setting, cfg in methods(rec):
                model = copy.deepcopy(dense)
                t0 = time.perf_counter()
                decompose_(model, cfg, data=data)
                key = f"{method} {setting}"
                row = rows.setdefault(
                    key, {"method": method, "setting": setting, "acc": [], "seconds": []}
                )
                row["seconds"].append(time.perf_counter() - t0)
                row["acc"].append(evaluate_accuracy(model, data.test))
                if seed == seeds[0]:
                    row.update(measure_structure(model.eval(), x, runs))
        results["models"][name] = rows
    results["wall_seconds"] = time.perf_counter() - t_start
    report(results)
    atomic.write_json(RESULTS, results)
    print(f"wrote {RESULTS}")


def report(results: dict[str, Any]) -> None:
    head = (
        f"{'model':8} {'method':10} {'setting':13} {'params':>8} {'MFLOPs':>8} {'FLOPs x':>7} "
        f"{'bytes':>9} {'ORT ms':>7} {'speed x':>7} {'acc %':>13} {'d pp':>12}"
    )
    print(
        f"mnist5k, seeds {results['seeds']}, dense: {results['dense_epochs']} epochs "
        f"(lr {results['dense_lr']:g}), recovery for every row: {results['ft_epochs']} epoch(s) of "
        f"logit distillation (lr {results['ft_lr']:g}) + BN statistics re-measured"
        + (" (QUICK smoke run: accuracies are not meaningful)" if results["quick"] else "")
    )
    print("dense weights: " + "; ".join(results["dense_cached"]))
    print(head)
    print("-" * len(head))
    best = []
    for name, rows in results["models"].items():
        dense = rows["dense"]
        d_acc = statistics.mean(dense["acc"])
        for key, r in rows.items():
            acc = statistics.mean(r["acc"])
            sd = statistics.stdev(r["acc"]) if len(r["acc"]) > 1 else 0.0
            # Paired by seed: each decomposed model against the dense model it came from.
            deltas = [100 * (a - b) for a, b in zip(r["acc"], dense["acc"])]
            delta = 100 * (acc - d_acc)  # = mean of the paired deltas
            d_sd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
            flops_x = dense["flops"] / r["flops"]
            speed_x = dense["ort_ms"] / r["ort_ms"]
            r.update(
                acc_mean=acc,
                acc_std=sd,
                flops_ratio=flops_x,
                ort_speedup=speed_x,
                delta_pp=delta,
                delta_pp_std=d_sd,
                delta_pp_per_seed=deltas,
            )
            print(
                f"{name:8} {r['method']:10} {r['setting']:13} {r['params']:8,} "
                f"{r['flops'] / 1e6:8.2f} {flops_x:6.2f}x {r['bytes']:9,} {r['ort_ms']:7.3f} "
                f"{speed_x:6.2f}x {100 * acc:6.2f}+-{100 * sd:4.2f} {delta:+6.2f}+-{d_sd:4.2f}"
            )
            if r["method"] not in ("dense", "control") and flops_x >= 2.0 and delta >= -1.0:
                best.append((name, key, flops_x, delta))
        print()
    print("target: >= 2x fewer FLOPs at <= 1 pp accuracy loss (mean over seeds vs the dense model)")
    for name in results["models"]:
        hits = [b for b in best if b[0] == name]
        if hits:
            top = max(hits, key=lambda b: b[2])
            print(
                f"  {name}: MET by {len(hits)} setting(s); largest FLOPs ratio {top[2]:.2f}x "
                f"({top[1]}, {top[3]:+.2f} pp)"
            )
        else:
            print(f"  {name}: MISSED (no setting reaches both)")
    results["target_met"] = {n: [b[1] for b in best if b[0] == n] for n in results["models"]}


if __name__ == "__main__":
    main()
