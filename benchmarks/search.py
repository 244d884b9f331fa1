"""Search benchmark: random vs regularized evolution vs REINFORCE at equal trial budget.

Like NAS-Bench-101, every architecture of the space is trained and measured once first (here,
in this run: SearchNet on sklearn digits, 54 architectures), then each strategy searches the
measured table through Optuna over many seeds, so strategies are compared on identical numbers
and the comparison can be repeated cheaply. Reported per strategy: the best accuracy found
under a parameter cap (mean over seeds), the regret to the true best under the cap, the
hypervolume of (accuracy, -params), and a one-sided permutation test against random search.

    python benchmarks/search.py [--seeds 100] [--budget 20] [--epochs 3] [--reuse-table]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from slimkit.data import load_dataset
from slimkit.search import DEFAULT_NAS_SPACE, hypervolume_2d, make_sampler
from slimkit.search.nas import capped_score, evaluate_architecture

OUT = Path(__file__).parent / "results" / "search.json"


def measure_space(epochs: int) -> list[dict]:
    data = load_dataset("digits", batch_size=64)
    rows = []
    for params in DEFAULT_NAS_SPACE.all_points():
        m = evaluate_architecture(
            params, data, epochs=epochs, lr=3e-3, seed=0, measure_latency=False
        )
        rows.append({"arch": params, **m})
    return rows


def key(params: dict) -> tuple:
    return tuple(params[k] for k in DEFAULT_NAS_SPACE.choices)


def run_strategy(strategy: str, seed: int, budget: int, table: dict, cap: float) -> list[dict]:
    options = {
        "evolution": {"population": 8, "sample_size": 4},
        "reinforce": {"warmup": 3, "lr": 0.5},
    }
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(strategy, seed=seed, **options.get(strategy, {}))
    )

    def objective(trial):
        row = table[key(DEFAULT_NAS_SPACE.suggest(trial))]
        return capped_score(
            row["accuracy"], row["params"], cap
        )  # the objective `slimkit search nas` uses

    study.optimize(objective, n_trials=budget)
    return [table[key(t.params)] for t in study.trials]


def permutation_p(a: list[float], b: list[float], rounds: int = 20000, seed: int = 0) -> float:
    """One-sided p-value that mean(a) > mean(b) arose by chance (label permutation)."""
    rng = np.random.default_rng(seed)
    observed = np.mean(a) - np.mean(b)
    pooled = np.array(a + b)
    hits = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        hits += (pooled[: len(a)].mean() - pooled[len(a) :].mean()) >= observed
    return (hits + 1) / (rounds + 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--reuse-table",
        action="store_true",
        help="reuse the architecture table measured by the last run (results/search.json)",
    )
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(2)

    t0 = time.time()
    if args.reuse_table and OUT.exists():
        rows = json.loads(OUT.read_text())["space"]
        print(f"reusing the architecture table of {OUT}")
    else:
        rows = measure_space(args.epochs)
    measure_s = time.time() - t0
    table = {key(r["arch"]): r for r in rows}
    cap = float(np.median([r["params"] for r in rows]))  # half the space is over the cap
    best_true = max(r["accuracy"] for r in rows if r["params"] <= cap)
    max_params = max(r["params"] for r in rows)

    results = {}
    for strategy in ("random", "evolution", "reinforce"):
        best, hv = [], []
        for seed in range(args.seeds):
            found = run_strategy(strategy, seed, args.budget, table, cap)
            best.append(max((r["accuracy"] for r in found if r["params"] <= cap), default=0.0))
            hv.append(
                hypervolume_2d(
                    [(r["accuracy"], 1 - r["params"] / max_params) for r in found], (0.0, 0.0)
                )
            )
        results[strategy] = {"best_under_cap": best, "hypervolume": hv}

    print(
        f"space: {len(rows)} architectures measured in {measure_s:.0f} s (digits, {args.epochs} epochs each); "
        f"budget {args.budget} trials = {100 * args.budget / len(rows):.0f}% of the space; {args.seeds} seeds; "
        f"cap {int(cap):,} params; true best under cap {best_true:.4f}"
    )
    print(
        f"{'strategy':<10} {'best acc (mean)':>16} {'regret (pp)':>12} {'hit best %':>11} {'hypervolume':>12} "
        f"{'p vs random':>12}"
    )
    summary = {}
    for s, r in results.items():
        mean_best = statistics.mean(r["best_under_cap"])
        regret = 100 * (best_true - mean_best)
        hit = 100 * statistics.mean(b >= best_true for b in r["best_under_cap"])
        hv = statistics.mean(r["hypervolume"])
        p = (
            permutation_p(r["best_under_cap"], results["random"]["best_under_cap"])
            if s != "random"
            else float("nan")
        )
        summary[s] = {
            "mean_best": mean_best,
            "regret_pp": regret,
            "hit_rate": hit,
            "hypervolume": hv,
            "p_vs_random": p,
        }
        print(f"{s:<10} {mean_best:>16.4f} {regret:>12.2f} {hit:>11.0f} {hv:>12.4f} {p:>12.4f}")
    ev, rnd = summary["evolution"], summary["random"]
    print(
        f"evolution vs random: regret {ev['regret_pp']:.2f} vs {rnd['regret_pp']:.2f} pp "
        f"({'beats' if ev['mean_best'] > rnd['mean_best'] else 'does not beat'} random, p={ev['p_vs_random']:.3f})"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "args": vars(args),
                "cap": cap,
                "best_true": best_true,
                "space": rows,
                "summary": summary,
                "raw": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
