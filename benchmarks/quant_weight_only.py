"""Weight-only quantization side by side: slimkit vs ONNX Runtime int8 and scikit-learn k-means.

LeNet-300-100 (the Deep Compression model) is trained once on mnist5k (28x28, seed 0); every
method starts from that float model:

* ``fp32``: slimkit safetensors file, and the ONNX file of ``slimkit.export.onnx.to_onnx``.
* ``torch-fp16``: ``model.half()`` state dict written by ``safetensors.torch.save`` (the usual
  16-bit baseline); ``slimkit-fp16`` the same weights through the ``.slim`` writer.
* ``ort-dynamic-int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 per-channel weights)
  on the fp32 ONNX file; accuracy by running that file in ORT.
* ``slimkit-*``: ``sk.quantize_`` with each weight-only method, then the ``.slim`` artifact of
  ``slimkit.export.slimformat.save``; accuracy is measured on the model *loaded back* from that
  file (so the bytes and the accuracy are of the same artifact).
* ``sklearn-kmeans4`` vs ``slimkit-kmeans4``: per-layer 16-centroid weight sharing with
  ``sklearn.cluster.KMeans`` (k-means++ init, n_init=1) against slimkit's linear-init 1-D Lloyd
  (Deep Compression's choice); same codes layout, so the same ``.slim`` writer is used for both.

Bytes are the size on disk of each file written; accuracy is top-1 on mnist5k's 1,000 test
images. Prints a table and ratios, writes benchmarks/results/quant_weight_only.json.

Run: ``.venv/bin/python benchmarks/quant_weight_only.py`` (``--quick``: 1 training epoch).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slimkit as sk
from slimkit import atomic
from slimkit.export import slimformat
from slimkit.export.onnx import to_onnx
from slimkit.export.ort import make_session
from slimkit.metrics.fidelity import sqnr_db
from slimkit.quantization import (
    Float16Weights,
    KMeansQuantization,
    LinearQuantization,
    Log2Quantization,
    MixedPrecision,
    QuantCodes,
    finetune_centroids,
    quantized_layers,
)
from slimkit.quantization.codes import packed_bytes
from slimkit.quantization.common import attach
from slimkit.training import TrainConfig, evaluate_accuracy

HERE = Path(__file__).parent


def ort_accuracy(path: Path, loader) -> float:
    sess = make_session(str(path), threads=1)
    name = sess.get_inputs()[0].name
    right = total = 0
    for x, y in loader:
        out = sess.run(None, {name: x.numpy().astype(np.float32)})[0]
        right += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return right / total


def sklearn_kmeans_(model: torch.nn.Module, bits: int) -> None:
    """Per-layer k-means weight sharing with scikit-learn (k-means++), stored like slimkit's."""
    from sklearn.cluster import KMeans

    for _, m in sk.config.select_modules(model).items():
        w = m.weight.detach().float()
        km = KMeans(n_clusters=2**bits, n_init=1, random_state=0).fit(
            w.reshape(-1, 1).double().numpy()
        )
        book = torch.from_numpy(km.cluster_centers_.reshape(-1)).float()
        codes = torch.from_numpy(km.labels_.astype(np.int32)).reshape(w.shape)
        attach(
            m,
            QuantCodes(
                codes,
                bits,
                {"codebook": book},
                {"scheme": "kmeans", "bits": bits, "pinned_zero": False},
            ),
        )


def weight_sqnr(ref: torch.nn.Module, model: torch.nn.Module) -> float:
    before = dict(ref.named_modules())
    vals = [sqnr_db(before[n].weight, m.weight) for n, m in quantized_layers(model).items()]
    return float(np.mean(vals))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = sk.load_dataset("mnist5k", batch_size=128)
    base = sk.build_model("lenet300")
    sk.train(base, data, TrainConfig(epochs=1 if args.quick else 5, lr=2e-3, seed=0))
    x = data.example_input(4)
    rows: list[dict[str, Any]] = []

    def row(method: str, path: Path, acc: float, seconds: float = 0.0, model=None):
        # packed: bytes of pack(codes) + scales/codebooks of the quantized layers (by packing);
        # the .slim file adds biases, the manifest and its entropy stage on top of that.
        layers = quantized_layers(model) if model is not None else {}
        rows.append(
            {
                "method": method,
                "bytes": path.stat().st_size,
                "packed_weight_bytes": sum(packed_bytes(m) for m in layers.values()) or None,
                "weight_sqnr_db": weight_sqnr(base, model) if layers else None,
                "accuracy": acc,
                "quant_seconds": seconds,
                "file": path.name,
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sk.save(base, t / "fp32.safetensors")
        acc32 = evaluate_accuracy(base, data.test)
        row("fp32 (safetensors)", t / "fp32.safetensors", acc32)
        to_onnx(base, t / "fp32.onnx", x)
        row("fp32 (onnx)", t / "fp32.onnx", ort_accuracy(t / "fp32.onnx", data.test))

        from safetensors.torch import save as st_save

        half = {k: v.half().contiguous() for k, v in base.state_dict().items()}
        atomic.write_bytes(t / "torch_fp16.safetensors", st_save(half))
        half_model = copy.deepcopy(base)
        half_model.load_state_dict({k: v.float() for k, v in half.items()})
        row(
            "torch fp16 (safetensors)",
            t / "torch_fp16.safetensors",
            evaluate_accuracy(half_model, data.test),
        )

        from onnxruntime.quantization import QuantType, quantize_dynamic

        start = time.perf_counter()
        quantize_dynamic(
            str(t / "fp32.onnx"),
            str(t / "ort_int8.onnx"),
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        sec = time.perf_counter() - start
        row(
            "ORT quantize_dynamic int8",
            t / "ort_int8.onnx",
            ort_accuracy(t / "ort_int8.onnx", data.test),
            sec,
        )

        methods: dict[str, Any] = {
            "slimkit fp16": Float16Weights(),
            "slimkit linear int8 (per-ch)": LinearQuantization(bits=8),
            "slimkit linear int4 (per-ch)": LinearQuantization(bits=4),
            "slimkit log2 5-bit": Log2Quantization(bits=5),
            "slimkit kmeans 4-bit": KMeansQuantization(bits=4),
            "slimkit kmeans 4-bit + finetune": KMeansQuantization(bits=4),
            "slimkit kmeans 2-bit + finetune": KMeansQuantization(bits=2),
            "slimkit mixed 3 bits/weight": MixedPrecision(
                budget_bits_per_weight=3.0, candidates=(2, 3, 4, 6, 8)
            ),
        }
        for name, cfg in methods.items():
            m = copy.deepcopy(base)
            start = time.perf_counter()
            kwargs = {"data": data} if isinstance(cfg, MixedPrecision) else {}
            sk.quantize_(m, cfg, **kwargs)
            if "finetune" in name:
                finetune_centroids(m, data, TrainConfig(epochs=1, lr=1e-3, seed=0))
            sec = time.perf_counter() - start
            path = t / (name.replace(" ", "_").replace("/", "") + ".slim")
            slimformat.save(m, path)
            loaded = slimformat.load(path)
            row(name, path, evaluate_accuracy(loaded, data.test), sec, m)

        m = copy.deepcopy(base)
        start = time.perf_counter()
        sklearn_kmeans_(m, 4)
        sec = time.perf_counter() - start
        slimformat.save(m, t / "sklearn_kmeans4.slim")
        row(
            "sklearn KMeans 4-bit (k-means++)",
            t / "sklearn_kmeans4.slim",
            evaluate_accuracy(slimformat.load(t / "sklearn_kmeans4.slim"), data.test),
            sec,
            m,
        )

    print(f"\nLeNet-300-100 on mnist5k (1,000 test images), torch {torch.__version__}")
    print(
        f"{'method':36s} {'file bytes':>10s} {'vs fp32':>8s} {'packed B':>9s} {'accuracy':>9s}"
        f" {'w-SQNR dB':>10s}"
        f" {'quant s':>8s}"
    )
    ref = rows[0]["bytes"]
    for r in rows:
        s = "" if r["weight_sqnr_db"] is None else f"{r['weight_sqnr_db']:.1f}"
        pk = "" if r["packed_weight_bytes"] is None else f"{r['packed_weight_bytes']:,d}"
        print(
            f"{r['method']:36s} {r['bytes']:>10,d} {ref / r['bytes']:>7.2f}x {pk:>9s} "
            f"{r['accuracy']:>9.4f} {s:>10s} {r['quant_seconds']:>8.2f}"
        )
    by = {r["method"]: r for r in rows}
    ratios = {
        "ort_int8_bytes / slimkit_int8_bytes": by["ORT quantize_dynamic int8"]["bytes"]
        / by["slimkit linear int8 (per-ch)"]["bytes"],
        "ort_int8_bytes / slimkit_kmeans4_ft_bytes": by["ORT quantize_dynamic int8"]["bytes"]
        / by["slimkit kmeans 4-bit + finetune"]["bytes"],
        "torch_fp16_bytes / slimkit_fp16_bytes": by["torch fp16 (safetensors)"]["bytes"]
        / by["slimkit fp16"]["bytes"],
        "sklearn_kmeans4_seconds / slimkit_kmeans4_seconds": by["sklearn KMeans 4-bit (k-means++)"][
            "quant_seconds"
        ]
        / max(1e-9, by["slimkit kmeans 4-bit"]["quant_seconds"]),
        "slimkit_kmeans4_acc - sklearn_kmeans4_acc": by["slimkit kmeans 4-bit"]["accuracy"]
        - by["sklearn KMeans 4-bit (k-means++)"]["accuracy"],
    }
    print("\nratios:")
    for k, v in ratios.items():
        print(f"  {k:52s} {v:.3f}")
    atomic.write_json(
        HERE / "results" / "quant_weight_only.json",
        {
            "model": "lenet300",
            "dataset": "mnist5k",
            "quick": args.quick,
            "rows": rows,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
