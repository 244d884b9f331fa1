"""Knowledge distillation on mnist5k: a small student alone vs with each slimkit KD variant.

Teacher: LeNet-5 from the zoo (431k parameters), trained once (seed 0) for ``TEACHER_EPOCHS``.
Student: a thin LeNet-5 (conv4-pool-conv8-pool-fc32-fc10, ~5.4k parameters, ~80x fewer), defined
here because the zoo has no width option. Every student run gets the same epochs, optimizer
(AdamW), learning rate, schedule and seed set; only the loss differs:

* alone       - cross-entropy on the hard labels (slimkit.training.train, no teacher)
* logit       - Hinton KD, T = 4, alpha = 0.9 (LogitKD)
* hint        - CE + FitNets hint conv2 -> teacher conv2 through a learned 1x1 conv (HintKD)
* layerwise   - CE + pool1/conv2/fc1 pairs with weights 1, 1, 0.5, learned adapters (LayerwiseKD)
* attention   - CE + attention transfer on pool1 and conv2, beta = 1000 (AttentionTransfer)

The teacher's logits and watched features are cached per training sample (CachedTeacher; no
augmentation, so they equal the live teacher's, see tests/distillation) to fit the time budget.
Fraction of the gap closed = (acc_variant - acc_alone) / (acc_teacher - acc_alone), on the mean
test accuracy (1,000 mnist5k test images) over the seeds. Hyper-parameters are the papers'
defaults, not tuned on the test set. Writes benchmarks/results/distillation.json.

Run: ``.venv/bin/python benchmarks/distillation.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from slimkit import atomic
from slimkit.data import load_dataset
from slimkit.distillation import (
    AttentionTransfer,
    CachedTeacher,
    DistillConfig,
    HintKD,
    LayerwiseKD,
    LogitKD,
    agreement,
    distill,
)
from slimkit.metrics import count_params
from slimkit.models import build_model
from slimkit.training import TrainConfig, evaluate_accuracy, train

RESULTS = Path(__file__).parent / "results" / "distillation.json"
TEACHER_EPOCHS = 20


class ThinLeNet5(nn.Module):
    """LeNet-5 with 4/8 conv channels and a 32-unit hidden layer; same layer names as the zoo's."""

    def __init__(self, c1: int = 4, c2: int = 8, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5)  # (B, 1, 28, 28) -> (B, c1, 24, 24)
        self.pool1 = nn.MaxPool2d(2)  # -> (B, c1, 12, 12)
        self.conv2 = nn.Conv2d(c1, c2, 5)  # -> (B, c2, 8, 8)
        self.pool2 = nn.MaxPool2d(2)  # -> (B, c2, 4, 4)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def variants() -> dict[str, tuple | None]:
    return {
        "alone": None,
        "logit": (LogitKD(temperature=4.0, alpha=0.9),),
        "hint": (HintKD(pairs=[("conv2", "conv2")]),),
        "layerwise": (
            LayerwiseKD(
                pairs=[("pool1", "pool1", 1.0), ("conv2", "conv2", 1.0), ("fc1", "fc1", 0.5)]
            ),
        ),
        "attention": (
            AttentionTransfer(pairs=[("pool1", "pool1"), ("conv2", "conv2")], weight=500.0),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1 epoch, 2-epoch teacher")
    args = parser.parse_args()
    seeds, epochs, teacher_epochs = args.seeds, args.epochs, TEACHER_EPOCHS
    if args.quick:
        seeds, epochs, teacher_epochs = 2, 1, 2
    torch.set_num_threads(1)  # the machine is shared; one thread keeps runs comparable
    data = load_dataset("mnist5k", batch_size=args.batch_size)

    t0 = time.perf_counter()
    torch.manual_seed(0)
    teacher = build_model("lenet5")
    train(teacher, data, TrainConfig(epochs=teacher_epochs, lr=1e-3, seed=0), description="teacher")
    teacher_acc = evaluate_accuracy(teacher, data.test)
    teacher_params = count_params(teacher)
    cached = CachedTeacher(teacher)  # one teacher pass per training sample, reused by every run
    student_params = count_params(ThinLeNet5())
    print(
        f"teacher LeNet-5: {teacher_params:,} params, test accuracy {teacher_acc:.4f} "
        f"({teacher_epochs} epochs, {time.perf_counter() - t0:.0f} s)"
    )
    print(
        f"student thin LeNet-5: {student_params:,} params "
        f"({teacher_params / student_params:.0f}x fewer); {epochs} epochs, batch {args.batch_size}, "
        f"AdamW lr {args.lr}, cosine, seeds 0..{seeds - 1}"
    )

    runs: dict[str, list[dict[str, float]]] = {}
    for name, losses in variants().items():
        runs[name] = []
        for seed in range(seeds):
            cfg = TrainConfig(epochs=epochs, lr=args.lr, seed=seed)
            torch.manual_seed(seed)
            student = ThinLeNet5()
            start = time.perf_counter()
            if losses is None:
                train(student, data, cfg, description=f"{name} s{seed}")
            else:
                distill(student, cached, data, DistillConfig(losses=losses, train=cfg))
            runs[name].append(
                {
                    "seed": seed,
                    "accuracy": evaluate_accuracy(student, data.test),
                    "agreement": agreement(student, teacher, data.test),
                    "seconds": time.perf_counter() - start,
                }
            )
        accs = [r["accuracy"] for r in runs[name]]
        print(f"  {name:<16} " + " ".join(f"{a:.4f}" for a in accs))

    alone = statistics.mean(r["accuracy"] for r in runs["alone"])
    gap = teacher_acc - alone
    rows = []
    for name, rs in runs.items():
        accs = [r["accuracy"] for r in rs]
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        closed = (mean - alone) / gap if gap > 0 else float("nan")
        rows.append(
            {
                "variant": name,
                "accuracy_mean": mean,
                "accuracy_std": std,
                "error_mean": 1.0 - mean,
                "agreement_mean": statistics.mean(r["agreement"] for r in rs),
                "gap_closed": closed,
                "seconds_mean": statistics.mean(r["seconds"] for r in rs),
                "runs": rs,
            }
        )

    print()
    print(
        f"{'variant':<16} {'accuracy':>16} {'error':>7} {'agree':>7} {'gap closed':>11} {'s/run':>6}"
    )
    print(f"{'teacher':<16} {teacher_acc:>16.4f} {1 - teacher_acc:>7.4f} {'':>7} {'':>11} {'':>6}")
    for r in rows:
        acc = f"{r['accuracy_mean']:.4f}±{r['accuracy_std']:.4f}"
        print(
            f"{r['variant']:<16} {acc:>16} {r['error_mean']:>7.4f} {r['agreement_mean']:>7.4f} "
            f"{r['gap_closed'] * 100:>10.1f}% {r['seconds_mean']:>6.1f}"
        )
    print(f"teacher-student error gap (alone): {gap * 100:.2f} points; target >= 50 % closed")

    result = {
        "dataset": "mnist5k",
        "teacher": {
            "model": "lenet5",
            "params": teacher_params,
            "accuracy": teacher_acc,
            "epochs": teacher_epochs,
        },
        "student": {
            "model": "ThinLeNet5(c1=4, c2=8, hidden=32)",
            "params": student_params,
            "param_ratio": teacher_params / student_params,
        },
        "train": {
            "epochs": epochs,
            "optimizer": "adamw",
            "lr": args.lr,
            "schedule": "cosine",
            "seeds": list(range(seeds)),
        },
        "gap": gap,
        "variants": rows,
        "quick": args.quick,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(RESULTS, json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
