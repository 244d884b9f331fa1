"""Auto-compress vs a hand-picked uniform recipe, side by side in one run.

LeNet-300-100 on mnist5k, trained once per seed. Goal: the .slim artifact within a byte budget
(dense fp32 bytes / 40 by default) at <= 0.5 pp accuracy drop.
- uniform: what a user would pick by hand, Deep-Compression style: 92% global magnitude
  pruning + 1 epoch fine-tune, 4-bit k-means everywhere + centroid fine-tune;
- slimkit auto-compress: per-layer sparsity and bits searched by NSGA-II on (accuracy, bytes).
Both are measured on the artifact file they write.

    python benchmarks/autocompress.py [--seeds 1] [--trials 12] [--ratio 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import slimkit as sk
from slimkit.data import load_dataset
from slimkit.export import slimformat
from slimkit.metrics import dense_fp32_bytes
from slimkit.models import build_model
from slimkit.pruning import finalize_, reapply_masks
from slimkit.quantization.kmeans import KMeansQuantization, finetune_centroids
from slimkit.search.autocompress import AutoCompressConfig, auto_compress
from slimkit.training import TrainConfig, evaluate_accuracy, train

OUT = Path(__file__).parent / "results" / "autocompress.json"


def uniform(model, data, ft: TrainConfig, folder: Path) -> dict:
    sk.prune_(model, sk.MagnitudePruning(sparsity=0.92, scope="global"))
    train(model, data, ft, after_step=reapply_masks)
    finalize_(model)
    sk.quantize_(model, KMeansQuantization(bits=4))
    finetune_centroids(model, data, ft)
    nbytes = slimformat.save(model, folder / "uniform.slim")
    return {"bytes": nbytes, "accuracy": evaluate_accuracy(model, data.test)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--ratio", type=float, default=40.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist5k")
    rows = []
    for seed in range(args.seeds):
        model = build_model("lenet300", seed=seed)
        train(model, data, TrainConfig(epochs=8, lr=1e-3, seed=seed))
        dense_acc = evaluate_accuracy(model, data.test)
        budget = int(dense_fp32_bytes(model) / args.ratio)
        ft = TrainConfig(epochs=1, lr=5e-4, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            import copy

            u = uniform(copy.deepcopy(model), data, ft, Path(tmp))
            t_uniform = time.time() - t0
            cfg = AutoCompressConfig(
                max_bytes=budget,
                max_accuracy_drop=0.005,
                n_trials=args.trials,
                sparsities=(0.8, 0.9, 0.95, 0.97),
                bits=(2, 3, 4, 5),
                finetune_epochs=1,
                lr=5e-4,
                seed=seed,
            )
            t0 = time.time()
            res = auto_compress(
                model, data, cfg, Path(tmp) / "auto", storage=f"sqlite:///{tmp}/auto.db"
            )
            t_auto = time.time() - t0
        row = {
            "seed": seed,
            "dense_accuracy": dense_acc,
            "dense_bytes": dense_fp32_bytes(model),
            "budget": budget,
            "uniform": u,
            "auto": {
                "bytes": res.best["bytes"],
                "accuracy": res.best["accuracy"],
                "met": res.met,
                "message": res.message,
            },
            "seconds": {"uniform": t_uniform, "auto": t_auto},
        }
        rows.append(row)
        print(
            f"seed {seed}: dense acc {dense_acc:.4f}, {row['dense_bytes']:,} B fp32; budget {budget:,} B "
            f"(1/{args.ratio:g}), max drop 0.5 pp"
        )
        for name, r in (("uniform 92% + 4-bit", u), ("slimkit auto", row["auto"])):
            drop = 100 * (dense_acc - r["accuracy"])
            ok = r["bytes"] <= budget and drop <= 0.5
            print(
                f"  {name:<22} {int(r['bytes']):>8,} B  ratio {row['dense_bytes'] / r['bytes']:6.1f}x  "
                f"acc {r['accuracy']:.4f}  drop {drop:+.2f} pp  {'MEETS' if ok else 'misses'} the goal"
            )
        print(
            f"  auto-compress: {res.message} ({args.trials} trials, {t_auto:.0f} s; uniform {t_uniform:.0f} s)"
        )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
