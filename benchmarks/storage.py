"""Storage benchmark: Deep Compression pipeline (.slim artifact) vs zipping the dense weights.

For LeNet-5 (the `make demo` recipe) and LeNet-300-100 on mnist5k, 3 seeds each, it runs the
example recipe (export reduced to the .slim file, no latency runs) and measures, on real files:

- dense fp32: the trained model's parameters as fp32 (4 bytes each), its safetensors file, and
  ``torch.save(state_dict)``; the generic baseline: that safetensors file compressed with lzma
  (preset 9 | extreme) and zlib (level 9), i.e. what a user gets by zipping the file;
- the ``.slim`` artifact bytes on disk; ratio = dense fp32 bytes / .slim bytes;
- accuracy drop (trained dense model -> model loaded back from the .slim file), mean of seeds;
- bits per weight after each stage (.slim bytes * 8 / parameters) and, for the final artifact,
  before and after the entropy stage.

Deep Compression (Han et al. 2016) reports 39x (LeNet-5) and 40x (LeNet-300-100) on full MNIST.
Target here: >= 60x at <= 0.5 pp mean accuracy drop.

    python benchmarks/storage.py [--seeds 3] [--models lenet5,lenet300]
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import statistics
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("SLIMKIT_QUIET", "1")

import torch  # noqa: E402

from slimkit import io as slim_io  # noqa: E402
from slimkit.export import slimformat  # noqa: E402
from slimkit.pipeline import compress, load_recipe, parse_recipe  # noqa: E402
from slimkit.training import evaluate_accuracy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "lenet5": ROOT / "examples/lenet5_deep_compression.yaml",
    "lenet300": ROOT / "examples/lenet300.yaml",
}
PUBLISHED = {"lenet5": 39.0, "lenet300": 40.0}
TARGET_RATIO, TARGET_DROP = 60.0, 0.5


def bench_recipe(name: str, seed: int, workdir: Path) -> dict:
    recipe = load_recipe(RECIPES[name])
    raw = recipe.to_dict()
    raw["seed"] = seed
    raw["measure"] = {**raw["measure"], "onnx": False}
    raw["max_accuracy_drop"] = None  # measured and reported here, not gated
    stages = [s for s in raw["stages"] if next(iter(s)) not in ("export", "benchmark")]
    raw["stages"] = [*stages, {"export": {"formats": ["slim"]}}]
    out = workdir / f"{name}-{seed}"
    res = compress(parse_recipe(raw, f"{name} seed {seed}"), out, log=lambda s: None)
    rows = res.rows
    train_index = next(r["index"] for r in rows if r["stage"] == "train")
    dense_path = out / "checkpoints" / f"stage_{train_index}.safetensors"
    dense_model = slim_io.load(dense_path)
    dense_st = dense_path.read_bytes()
    buf = io.BytesIO()
    torch.save(dense_model.state_dict(), buf)
    slim_path = out / res.metrics["artifacts"]["slim"]["path"]
    slim_bytes = slim_path.stat().st_size
    params = sum(p.numel() for p in dense_model.parameters())
    # The artifact itself, loaded back, against the trained dense model.
    from slimkit.pipeline.runner import load_data

    data = load_data(parse_recipe(raw))
    acc_dense = evaluate_accuracy(dense_model, data.test)
    acc_slim = evaluate_accuracy(slimformat.load(slim_path), data.test)
    st = slimformat.stats(slim_path)
    return {
        "model": name,
        "seed": seed,
        "params": params,
        "dense_fp32_bytes": 4 * params,
        "dense_safetensors_bytes": len(dense_st),
        "dense_torch_save_bytes": len(buf.getvalue()),
        "dense_lzma_bytes": len(lzma.compress(dense_st, preset=9 | lzma.PRESET_EXTREME)),
        "dense_zlib_bytes": len(zlib.compress(dense_st, 9)),
        "slim_bytes": slim_bytes,
        "ratio": 4 * params / slim_bytes,
        "accuracy_dense": acc_dense,
        "accuracy_slim": acc_slim,
        "drop_pp": 100 * (acc_dense - acc_slim),
        "bits_per_weight_by_stage": {
            f"{r['index']}:{r['stage']}": r["bits_per_weight"] for r in rows
        },
        "final_bits_per_weight_before_entropy": 8
        * (sum(t["bytes_before_entropy"] for t in st["tensors"]))
        / params,
        "final_bits_per_weight": 8 * slim_bytes / params,
        "layers": {
            t["name"]: {
                "encoding": t["encoding"],
                "bits": t["bits"],
                "nonzeros": t["nonzeros"],
                "bits_per_weight": t["bits_per_weight"],
            }
            for t in st["tensors"]
            if t["name"].endswith("weight")
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", default="lenet5,lenet300")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "storage.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for seed in range(args.seeds):
                r = bench_recipe(name, seed, Path(tmp))
                results.append(r)
                # Partial results survive an interrupted run (the summary is added at the end).
                from slimkit import atomic

                atomic.write_json(Path(args.results), {"results": results, "partial": True})
                print(
                    f"{name} seed {seed}: ratio {r['ratio']:.1f}x, drop {r['drop_pp']:+.2f} pp",
                    flush=True,
                )
    summary = {}
    print()
    head = (
        f"{'model':9} {'seed':>4} {'fp32 B':>9} {'st B':>9} {'torch.save':>10} {'zlib-9':>9} "
        f"{'lzma-9e':>9} {'.slim B':>8} {'ratio':>7} {'vs lzma':>8} {'acc dense':>9} {'acc slim':>9} {'drop pp':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['model']:9} {r['seed']:>4} {r['dense_fp32_bytes']:>9,} {r['dense_safetensors_bytes']:>9,} "
            f"{r['dense_torch_save_bytes']:>10,} {r['dense_zlib_bytes']:>9,} {r['dense_lzma_bytes']:>9,} "
            f"{r['slim_bytes']:>8,} {r['ratio']:>6.1f}x {r['dense_lzma_bytes'] / r['slim_bytes']:>7.1f}x "
            f"{100 * r['accuracy_dense']:>8.2f}% {100 * r['accuracy_slim']:>8.2f}% {r['drop_pp']:>+8.2f}"
        )
    print()
    for name in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == name]
        ratio = statistics.mean(r["ratio"] for r in rs)
        drop = statistics.mean(r["drop_pp"] for r in rs)
        zip_ratio = statistics.mean(r["dense_fp32_bytes"] / r["dense_lzma_bytes"] for r in rs)
        ok = ratio >= TARGET_RATIO and drop <= TARGET_DROP
        summary[name] = {
            "mean_ratio": ratio,
            "mean_drop_pp": drop,
            "lzma_baseline_ratio": zip_ratio,
            "published_deep_compression_ratio": PUBLISHED[name],
            "target_met": ok,
            "seeds": len(rs),
        }
        print(
            f"{name}: .slim {ratio:.1f}x (Deep Compression paper {PUBLISHED[name]:.0f}x; lzma of dense "
            f"file {zip_ratio:.2f}x) at {drop:+.2f} pp mean drop over {len(rs)} seed(s) -> "
            f"target >= {TARGET_RATIO:.0f}x at <= {TARGET_DROP} pp: {'MET' if ok else 'MISSED'}"
        )
        stages = rs[0]["bits_per_weight_by_stage"]
        per_stage = {
            k: statistics.mean(r["bits_per_weight_by_stage"][k] for r in rs) for k in stages
        }
        before = statistics.mean(r["final_bits_per_weight_before_entropy"] for r in rs)
        print(
            "  bits per weight after each stage (.slim bytes*8/params): "
            + ", ".join(f"{k} {v:.3f}" for k, v in per_stage.items())
            + f"; final before entropy coding {before:.3f}"
        )
        summary[name]["bits_per_weight_by_stage"] = per_stage
        summary[name]["final_bits_per_weight_before_entropy"] = before
    out = Path(args.results)
    from slimkit import atomic

    atomic.write_json(
        out,
        {
            "results": results,
            "summary": summary,
            "target": {"ratio": TARGET_RATIO, "max_drop_pp": TARGET_DROP},
        },
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
