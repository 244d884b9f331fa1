"""Auto-compress vs hand-picked uniform recipes, side by side in one run.

LeNet-300-100 on mnist5k, trained once per seed. Goal: the .slim artifact within a byte budget
(dense fp32 bytes / 40 by default) at <= 0.5 pp accuracy drop, accuracy measured on the artifact
file loaded back. Contenders, all measured the same way:
- uniform one-shot: what a user would pick by hand, Deep-Compression style: 92 % global
  magnitude pruning + 1 epoch fine-tune, 4-bit k-means everywhere + 1 epoch centroid fine-tune;
- uniform gradual: the same 92 % / 4 bits with the training one auto-compress trial gets
  (AGP in 4 steps x 2 epochs fine-tune, 2 epochs centroid fine-tune);
- slimkit auto-compress: per-layer sparsity and bits, constrained TPE (max accuracy subject to
  bytes <= budget), each trial trained as above.
Auto-compress never sees the test split: everything (dense model, every fine-tune) trains on the
first 3,200 of the 4,000 training images, auto-compress ranks its trials on the last 800 (its
validation split), and every artifact, auto-compress's best.slim included, is scored on the
1,000 test images. Target: auto-compress meets the goal on every seed.

    python benchmarks/autocompress.py [--seeds 3] [--trials 30] [--ratio 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

import slimkit as sk
from slimkit.data import from_tensors, load_dataset
from slimkit.export import slimformat
from slimkit.metrics import dense_fp32_bytes
from slimkit.models import build_model
from slimkit.pruning import GradualPruning, finalize_, reapply_masks
from slimkit.quantization.kmeans import KMeansQuantization, finetune_centroids
from slimkit.search.autocompress import AutoCompressConfig, auto_compress
from slimkit.training import TrainConfig, evaluate_accuracy, train

OUT = Path(__file__).parent / "results" / "autocompress.json"
MAX_DROP_PP = 0.5
VAL_SAMPLES = 800


def search_split(data):
    """Train minus its last VAL_SAMPLES images for fine-tuning, those images for ranking trials."""
    x, y = data.train.dataset.tensors  # (4000, 1, 28, 28), (4000,)
    n = len(x) - VAL_SAMPLES
    return from_tensors(
        x[:n], y[:n], x[n:], y[n:], name=f"{data.name}-search", num_classes=data.num_classes
    )


def artifact(model, data, path: Path) -> dict:
    nbytes = slimformat.save(model, path)
    return {"bytes": nbytes, "accuracy": evaluate_accuracy(slimformat.load(path), data.test)}


def uniform_oneshot(model, data, scoring, seed: int, folder: Path) -> dict:
    ft = TrainConfig(epochs=1, lr=5e-4, seed=seed)
    sk.prune_(model, sk.MagnitudePruning(sparsity=0.92, scope="global"))
    train(model, data, ft, after_step=reapply_masks)
    finalize_(model)
    sk.quantize_(model, KMeansQuantization(bits=4))
    finetune_centroids(model, data, ft)
    return artifact(model, scoring, folder / "uniform_oneshot.slim")


def uniform_gradual(model, data, scoring, cfg: AutoCompressConfig, folder: Path) -> dict:
    ft = TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.lr, seed=cfg.seed)
    gradual = GradualPruning(
        final_sparsity=0.92, steps=cfg.prune_steps, scope="global", finetune=ft
    )
    sk.prune_(model, gradual, data=data)
    finalize_(model)
    sk.quantize_(model, KMeansQuantization(bits=4))
    finetune_centroids(model, data, TrainConfig(epochs=cfg.centroid_epochs, lr=cfg.centroid_lr))
    return artifact(model, scoring, folder / "uniform_gradual.slim")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--ratio", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    search_data = search_split(data)  # train: 3,200 images, test: the 800 validation images
    rows = []
    for seed in range(args.seeds):
        model = build_model("lenet300", seed=seed)
        train(model, search_data, TrainConfig(epochs=8, lr=1e-3, seed=seed))
        model.eval()
        dense_acc = evaluate_accuracy(model, data.test)
        dense_bytes = dense_fp32_bytes(model)
        budget = int(dense_bytes / args.ratio)
        cfg = AutoCompressConfig(
            max_bytes=budget, max_accuracy_drop=MAX_DROP_PP / 100, n_trials=args.trials, seed=seed
        )
        seconds = {}
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            oneshot = uniform_oneshot(copy.deepcopy(model), search_data, data, seed, Path(tmp))
            seconds["uniform one-shot"] = time.time() - t0
            t0 = time.time()
            gradual = uniform_gradual(copy.deepcopy(model), search_data, data, cfg, Path(tmp))
            seconds["uniform gradual"] = time.time() - t0
            t0 = time.time()
            res = auto_compress(
                model, search_data, cfg, Path(tmp) / "auto", storage=f"sqlite:///{tmp}/auto.db"
            )
            seconds["auto"] = time.time() - t0
            # The deliverable itself, loaded back from best.slim.
            auto = artifact(slimformat.load(res.artifact), data, Path(tmp) / "check.slim")
            auto["bytes"] = Path(res.artifact).stat().st_size
        stages = collections.Counter(r["stage"].split(":")[0] for r in res.trials)
        contenders = {
            "uniform 92% + 4-bit one-shot": oneshot,
            "uniform 92% + 4-bit gradual": gradual,
            "slimkit auto-compress": auto,
        }
        for r in contenders.values():
            r["drop_pp"] = 100 * (dense_acc - r["accuracy"])
            r["meets"] = r["bytes"] <= budget and r["drop_pp"] <= MAX_DROP_PP
        row = {
            "seed": seed,
            "dense_accuracy": dense_acc,
            "dense_bytes": dense_bytes,
            "budget": budget,
            "contenders": contenders,
            "auto_message": res.message,
            "auto_best_choice": res.best["choice"],
            "auto_trial_stages": dict(stages),
            "auto_pareto": [
                {"number": p["number"], "bytes": p["bytes"], "accuracy": p["accuracy"]}
                for p in sorted(res.pareto, key=lambda p: p["bytes"])
            ],
            "seconds": seconds,
        }
        rows.append(row)
        print(
            f"seed {seed}: dense acc {dense_acc:.4f}, {dense_bytes:,} B fp32; budget {budget:,} B "
            f"(1/{args.ratio:g}), max drop {MAX_DROP_PP} pp",
            flush=True,
        )
        for name, r in contenders.items():
            print(
                f"  {name:<29} {int(r['bytes']):>7,} B  ratio {dense_bytes / r['bytes']:5.1f}x  "
                f"acc {r['accuracy']:.4f}  drop {r['drop_pp']:+.2f} pp  "
                f"{'MEETS' if r['meets'] else 'misses'} the goal",
                flush=True,
            )
        best = {k: round(v, 3) for k, v in res.best["choice"].items()}
        print(f"  auto-compress (on its validation split): {res.message}; choice {best}")
        print(
            f"  auto vs uniform gradual: bytes x{auto['bytes'] / gradual['bytes']:.2f}, "
            f"accuracy {100 * (auto['accuracy'] - gradual['accuracy']):+.2f} pp, "
            f"time x{seconds['auto'] / seconds['uniform gradual']:.0f} "
            f"({seconds['auto']:.0f} s for {len(res.trials)} trials: "
            + ", ".join(f"{n} {k}" for k, n in stages.items())
            + f"; uniform gradual {seconds['uniform gradual']:.0f} s)",
            flush=True,
        )
    met = all(r["contenders"]["slimkit auto-compress"]["meets"] for r in rows)
    for name in rows[0]["contenders"]:
        n = sum(r["contenders"][name]["meets"] for r in rows)
        mean_drop = sum(r["contenders"][name]["drop_pp"] for r in rows) / len(rows)
        mean_ratio = sum(r["dense_bytes"] / r["contenders"][name]["bytes"] for r in rows) / len(
            rows
        )
        print(
            f"{name:<29} meets the goal on {n}/{len(rows)} seeds; mean {mean_ratio:.1f}x at "
            f"{mean_drop:+.2f} pp"
        )
    print(
        f"target: auto-compress finds a model within the budget at <= {MAX_DROP_PP} pp drop "
        f"(every seed): {'MET' if met else 'MISSED'}"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "target_met": met, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
