"""int8 / 4-bit quantization side by side: ORT fp32, ORT's quantize_static, slimkit PTQ/QAT/k-means.

For LeNet-5 and MobileNetV2-tiny on mnist5k (28x28), per seed (3 seeds) one fp32 model is
trained and every method starts from it:

* ``fp32``: ``slimkit.export.onnx.to_onnx`` of the float model (BN folded by the exporter).
* ``ort-static``: ONNX Runtime's own ``onnxruntime.quantization.quantize_static`` on that fp32
  file with its defaults (QDQ format, MinMax calibration), fed the same calibration samples.
* ``slimkit-static``: ``StaticInt8(observer="mse", per_channel=True)`` + ``export_int8_onnx``.
* ``slimkit-qat``: ``QATInt8`` (1 epoch of STE fine-tuning, observers frozen after it) + export.
* ``slimkit-kmeans4``: Quant-A's ``KMeansQuantization(bits=4)`` with centroid fine-tuning when
  it exists; bytes are the ``.slim`` artifact of ``slimkit.export.slimformat.save``; accuracy is
  the PyTorch model's (ORT runs its dequantized weights as fp32, so latency = fp32's).

Accuracy is measured by running the written .onnx file in ORT over mnist5k's 1,000 test images
(mean of 3 seeds); bytes are the file's size on disk and latency the ORT median at batch 1 and
64 (1 intra-op thread, seed 0's files, best median of 5 interleaved rounds). Prints a table and ratios, writes
benchmarks/results/quantization.json.

Run: ``.venv/bin/python benchmarks/quantization.py`` (``--quick``: 1 seed, short training).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit import atomic
from slimkit.data import load_dataset
from slimkit.export.onnx import to_onnx
from slimkit.export.ort import make_session
from slimkit.metrics import file_bytes, ort_latency
from slimkit.models import build_model
from slimkit.quantization import QATInt8, StaticInt8, export_int8_onnx, quantize_
from slimkit.training import TrainConfig, evaluate_accuracy, train

RESULTS = Path(__file__).parent / "results" / "quantization.json"
METHODS = ["fp32", "ort-static", "slimkit-static", "slimkit-qat", "slimkit-kmeans4"]
EPOCHS = {"lenet5": 5, "mobilenetv2": 6}
CALIB = 256


def ort_accuracy(path: Path, data) -> float:
    sess = make_session(path, threads=2)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in data.test:
        out = sess.run(None, {name: x.numpy().astype(np.float32)})[0]
        correct += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def ort_static(fp32_path: Path, out: Path, data) -> None:
    """ONNX Runtime's own static int8 with its defaults on the same calibration samples."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            batches, seen = [], 0
            for x, _ in data.calib:
                batches.append({"input": x[: CALIB - seen].numpy().astype(np.float32)})
                seen += len(batches[-1]["input"])
                if seen >= CALIB:
                    break
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_path), str(out), Reader())


def kmeans4(model, data, folder: Path, seed: int) -> dict[str, Any] | None:
    """Quant-A's 4-bit k-means + 1 epoch of centroid fine-tuning; bytes of the .slim file."""
    try:
        from slimkit.export import slimformat
        from slimkit.quantization import KMeansQuantization, finetune_centroids
    except ImportError:
        return None
    q = quantize_(copy.deepcopy(model), KMeansQuantization(bits=4))
    finetune_centroids(q, data, TrainConfig(epochs=1, lr=1e-4, seed=seed))
    path = folder / "kmeans4.slim"
    slimformat.save(q, path)
    return {
        "accuracy": evaluate_accuracy(q, data.test),
        "bytes": file_bytes(path),
        "centroid_finetune": True,
        "bytes_from": ".slim artifact (slimformat.save)",
    }


def interleaved_latency(paths: dict[str, Path], x, batch: int, rounds: int = 5) -> dict[str, float]:
    """ORT median latency per file, measured round-robin; the best round's median is kept.

    On a shared, noisy machine interleaving the files and keeping each one's best median
    compares them under the same load instead of whatever load each happened to meet.
    """
    best = {m: float("inf") for m in paths}
    runs = 30 if batch == 1 else 10
    for _ in range(rounds):
        for m, p in paths.items():
            best[m] = min(best[m], ort_latency(p, x, batch, threads=1, runs=runs).median_ms)
    return best


def run_seed(
    name: str, seed: int, data, folder: Path, epochs: int, qat_batches: int | None, timing: bool
) -> dict[str, dict[str, Any]]:
    torch.manual_seed(seed)
    fp32 = build_model(name, image_size=28)
    train(fp32, data, TrainConfig(epochs=epochs, lr=2e-3, seed=seed), description=f"{name} s{seed}")
    x = data.example_input(2)
    paths = {m: folder / f"{name}-{seed}-{m}.onnx" for m in METHODS}
    to_onnx(fp32, paths["fp32"], x)
    t0 = time.perf_counter()
    ort_static(paths["fp32"], paths["ort-static"], data)
    times = {"ort-static": time.perf_counter() - t0}
    t0 = time.perf_counter()
    q = quantize_(copy.deepcopy(fp32), StaticInt8(observer="mse", calib_samples=CALIB), data=data)
    export_int8_onnx(q, paths["slimkit-static"], x)
    times["slimkit-static"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    qat_cfg = QATInt8(
        train=TrainConfig(epochs=1, lr=1e-4, seed=seed, max_batches=qat_batches),
        freeze_observers_epoch=1,
        calib_samples=CALIB,
    )
    qat = quantize_(copy.deepcopy(fp32), qat_cfg, data=data)
    export_int8_onnx(qat, paths["slimkit-qat"], x)
    times["slimkit-qat"] = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    for m in METHODS[:4]:
        rows[m] = {
            "accuracy": ort_accuracy(paths[m], data),
            "bytes": file_bytes(paths[m]),
            "seconds": times.get(m),
        }
    if timing:
        for batch, key in ((1, "ms_b1"), (64, "ms_b64")):
            for m, ms in interleaved_latency({m: paths[m] for m in METHODS[:4]}, x, batch).items():
                rows[m][key] = ms
    km = kmeans4(fp32, data, folder, seed)
    if km is not None:
        rows["slimkit-kmeans4"] = km
        if timing:  # its ONNX holds the dequantized float weights: same graph as fp32
            rows["slimkit-kmeans4"]["ms_b1"] = rows["fp32"]["ms_b1"]
            rows["slimkit-kmeans4"]["ms_b64"] = rows["fp32"]["ms_b64"]
    return rows


def summarize(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        runs = [r[m] for r in per_seed if m in r]
        if not runs:
            continue
        accs = [r["accuracy"] for r in runs]
        out[m] = {
            "accuracy_mean": statistics.mean(accs),
            "accuracy_per_seed": accs,
            "bytes": runs[0]["bytes"],
            "ms_b1": runs[0].get("ms_b1"),
            "ms_b64": runs[0].get("ms_b64"),
        }
        for k in ("centroid_finetune", "bytes_from"):
            if k in runs[0]:
                out[m][k] = runs[0][k]
    return out


def print_table(name: str, s: dict[str, dict[str, Any]]) -> None:
    base = s["fp32"]
    print(f"\n{name} (mnist5k, accuracy = mean of {len(base['accuracy_per_seed'])} seeds, ORT)")
    print(
        f"{'method':<17}{'acc %':>8}{'d pp':>7}{'bytes':>10}{'x smaller':>10}"
        f"{'ms b1':>8}{'ms b64':>8}{'b64 speedup':>12}"
    )
    for m, r in s.items():
        d = 100 * (r["accuracy_mean"] - base["accuracy_mean"])
        b1 = f"{r['ms_b1']:.3f}" if r["ms_b1"] else "-"
        b64 = f"{r['ms_b64']:.2f}" if r["ms_b64"] else "-"
        sp = f"{base['ms_b64'] / r['ms_b64']:.2f}x" if r["ms_b64"] else "-"
        print(
            f"{m:<17}{100 * r['accuracy_mean']:>8.2f}{d:>+7.2f}{r['bytes']:>10}"
            f"{base['bytes'] / r['bytes']:>9.2f}x{b1:>8}{b64:>8}{sp:>12}"
        )
    if "slimkit-kmeans4" not in s:
        print("slimkit-kmeans4: KMeansQuantization not available in this checkout (Quant-A)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 epoch: a smoke run")
    ap.add_argument("--models", nargs="*", default=["lenet5", "mobilenetv2"])
    args = ap.parse_args()
    torch.set_num_threads(1)  # on a shared 2-core machine extra threads only spin
    seeds = [0] if args.quick else [0, 1, 2]
    data = load_dataset("mnist5k", batch_size=64, calib_samples=CALIB)
    results: dict[str, Any] = {"calib_samples": CALIB, "seeds": seeds, "models": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            epochs = 1 if args.quick else EPOCHS[name]
            per_seed = [
                run_seed(
                    name,
                    s,
                    data,
                    Path(tmp),
                    epochs,
                    5 if args.quick else None,
                    timing=(s == seeds[0]),
                )
                for s in seeds
            ]
            summary = summarize(per_seed)
            results["models"][name] = {"epochs": epochs, "methods": summary}
            print_table(name, summary)
            st, ort_s = summary["slimkit-static"], summary["ort-static"]
            qat, fp = summary["slimkit-qat"], summary["fp32"]
            checks = {
                "static_acc_minus_ort_pp": 100 * (st["accuracy_mean"] - ort_s["accuracy_mean"]),
                "static_b64_speed_vs_ort": ort_s["ms_b64"] / st["ms_b64"],
                "qat_acc_minus_fp32_pp": 100 * (qat["accuracy_mean"] - fp["accuracy_mean"]),
                "static_b64_speedup_vs_fp32": fp["ms_b64"] / st["ms_b64"],
            }
            if "slimkit-kmeans4" in summary:
                km = summary["slimkit-kmeans4"]
                checks["kmeans4_acc_minus_fp32_pp"] = 100 * (
                    km["accuracy_mean"] - fp["accuracy_mean"]
                )
                checks["kmeans4_x_smaller"] = fp["bytes"] / km["bytes"]
            results["models"][name]["ratios"] = checks
            print(
                "ratios:",
                ", ".join(
                    f"{k}={v:+.2f}" if "pp" in k else f"{k}={v:.2f}" for k, v in checks.items()
                ),
            )
    results["seconds"] = time.perf_counter() - t_start
    print(f"\ntotal {results['seconds']:.0f} s")
    if not args.quick:
        atomic.write_text(RESULTS, json.dumps(results, indent=2))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
