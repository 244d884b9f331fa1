"""Auto-compress: search per-layer pruning ratio, bit width and rank to meet a size/latency
budget with the least accuracy loss.

Per prunable layer (Linear/Conv2d) a trial picks
``rank_<layer>`` (Linear only: keep full rank, or SVD to a fraction of it),
``sparsity_<layer>`` (magnitude pruning, masks held through a short fine-tune) and
``bits_<layer>`` (k-means weight sharing with centroid fine-tuning).
The trial then writes the real ``.slim`` artifact and measures its bytes on disk, ORT latency of
the compressed model (when a latency budget is set) and test accuracy. NSGA-II searches
(accuracy, bytes); the answer is the most accurate trial within every budget, else the trial
closest to the budgets, with the amount by which it missed.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.config import SlimConfig, check_int, check_range, select_modules
from slimkit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AutoCompressConfig(SlimConfig):
    max_bytes: int | None = None
    max_latency_ms: float | None = None  # ORT, batch 1, 2 threads
    max_accuracy_drop: float = 0.005  # fraction: 0.005 = 0.5 pp
    n_trials: int = 20
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9, 0.95)
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    rank_ratios: tuple[float, ...] = (1.0,)  # add e.g. 0.5, 0.25 to search SVD ranks of Linears
    finetune_epochs: int = 1
    max_batches: int | None = None
    lr: float = 1e-3
    seed: int = 0
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.max_bytes is None and self.max_latency_ms is None:
            raise ConfigError("auto-compress needs a budget: set max_bytes and/or max_latency_ms")
        if self.max_bytes is not None:
            check_int("max_bytes", self.max_bytes, 1, 10**12)
        if self.max_latency_ms is not None:
            check_range("max_latency_ms", self.max_latency_ms, 0.0, 1e6, low_open=True)
        check_range("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0)
        check_int("n_trials", self.n_trials, 1, 100_000)
        for s in self.sparsities:
            check_range("sparsities[]", s, 0.0, 1.0, high_open=True)
        for b in self.bits:
            check_int("bits[]", b, 1, 8)
        for r in self.rank_ratios:
            check_range("rank_ratios[]", r, 0.0, 1.0, low_open=True)


@dataclasses.dataclass
class AutoCompressResult:
    met: bool
    best: dict[str, Any]
    artifact: str
    pareto: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    dense_accuracy: float
    message: str


def _layers(model: nn.Module, cfg: AutoCompressConfig) -> dict[str, nn.Module]:
    return select_modules(model, cfg.targets, cfg.ignore, types=(nn.Linear, nn.Conv2d))


def compress_trial(
    model: nn.Module, data, choice: dict[str, Any], cfg: AutoCompressConfig
) -> nn.Module:
    """Apply one trial's per-layer choices to a copy of ``model`` (rank -> prune -> quantize)."""
    import slimkit as sk
    from slimkit.decomposition.methods import METHODS as DECOMPOSE
    from slimkit.pruning import finalize_, reapply_masks
    from slimkit.pruning.methods import METHODS as PRUNE
    from slimkit.quantization.methods import METHODS as QUANT
    from slimkit.training import TrainConfig, train

    m = copy.deepcopy(model)
    layers = list(_layers(m, cfg))
    factored: set[str] = set()
    for name in layers:
        ratio = choice.get(f"rank_{name}", 1.0)
        if ratio < 1.0 and isinstance(dict(m.named_modules())[name], nn.Linear):
            sk.decompose_(
                m, DECOMPOSE["svd"].from_dict({"rank": {"ratio": ratio}, "targets": [name]})
            )
            factored.add(name)
    for name in layers:
        s = choice.get(f"sparsity_{name}", 0.0)
        if s > 0 and name not in factored:
            sk.prune_(m, PRUNE["magnitude"].from_dict({"sparsity": s, "targets": [name]}))
    tc = TrainConfig(
        epochs=cfg.finetune_epochs, lr=cfg.lr, seed=cfg.seed, max_batches=cfg.max_batches
    )
    if cfg.finetune_epochs:
        train(m, data, tc, after_step=reapply_masks, description="auto-compress fine-tune")
    finalize_(m)
    for name in layers:
        targets = [f"re:{name}\\.[01]"] if name in factored else [name]
        sk.quantize_(
            m, QUANT["kmeans"].from_dict({"bits": int(choice[f"bits_{name}"]), "targets": targets})
        )
    if cfg.finetune_epochs:
        from slimkit.quantization.kmeans import finetune_centroids

        finetune_centroids(m, data, tc)
    return m.eval()


def measure(model: nn.Module, data, folder: Path, cfg: AutoCompressConfig) -> dict[str, float]:
    from slimkit.export import slimformat
    from slimkit.training import evaluate_accuracy

    out = {
        "bytes": float(slimformat.save(model, folder / "model.slim")),
        "accuracy": evaluate_accuracy(model, data.test),
    }
    if cfg.max_latency_ms is not None:
        from slimkit.export.onnx import to_onnx
        from slimkit.metrics import ort_latency

        x = data.example_input(1)
        to_onnx(model, folder / "model.onnx", x, atol=1e-3)
        out["latency_ms"] = ort_latency(folder / "model.onnx", x, 1, threads=2, runs=20).median_ms
    return out


def shortfall(row: dict[str, float], cfg: AutoCompressConfig, dense_acc: float) -> dict[str, float]:
    """How far a trial misses each goal (0 = met): bytes over, ms over, accuracy pp over."""
    miss = {"bytes": 0.0, "latency_ms": 0.0, "accuracy_pp": 0.0}
    if cfg.max_bytes is not None:
        miss["bytes"] = max(0.0, row["bytes"] - cfg.max_bytes)
    if cfg.max_latency_ms is not None:
        miss["latency_ms"] = max(0.0, row["latency_ms"] - cfg.max_latency_ms)
    miss["accuracy_pp"] = max(0.0, 100 * (dense_acc - row["accuracy"] - cfg.max_accuracy_drop))
    return miss


def auto_compress(
    model: nn.Module,
    data,
    cfg: AutoCompressConfig,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    study_name: str = "slimkit-auto",
    sampler=None,
) -> AutoCompressResult:
    """Search compression settings for ``model``; the chosen artifact is ``out_dir/best.slim``."""
    from slimkit import atomic
    from slimkit.search.pareto import pareto_front
    from slimkit.search.study import open_study, run_until
    from slimkit.training import evaluate_accuracy

    out = Path(out_dir)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    dense_acc = evaluate_accuracy(model.eval(), data.test)
    layers = _layers(model, cfg)
    task = {"kind": "auto", "config": cfg.to_dict(), "layers": list(layers)}
    study = open_study(study_name, storage, ["maximize", "minimize"], task, sampler=sampler)

    def objective(trial) -> tuple[float, float]:
        choice: dict[str, Any] = {}
        for name, mod in layers.items():
            if isinstance(mod, nn.Linear) and len(cfg.rank_ratios) > 1:
                choice[f"rank_{name}"] = trial.suggest_categorical(
                    f"rank_{name}", list(cfg.rank_ratios)
                )
            choice[f"sparsity_{name}"] = trial.suggest_categorical(
                f"sparsity_{name}", list(cfg.sparsities)
            )
            choice[f"bits_{name}"] = trial.suggest_categorical(f"bits_{name}", list(cfg.bits))
        compressed = compress_trial(model, data, choice, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(compressed, data, Path(tmp), cfg)
            shutil.copyfile(Path(tmp) / "model.slim", out / "trials" / f"trial_{trial.number}.slim")
        for k, v in row.items():
            trial.set_user_attr(k, v)
        return row["accuracy"], row["bytes"]

    torch.manual_seed(cfg.seed)
    run_until(study, objective, cfg.n_trials)
    from optuna.trial import TrialState

    rows = [
        {"number": t.number, "choice": dict(t.params), **t.user_attrs}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    for r in rows:
        r["miss"] = shortfall(r, cfg, dense_acc)
    feasible = [r for r in rows if not any(r["miss"].values())]
    if feasible:
        best = max(feasible, key=lambda r: (r["accuracy"], -r["bytes"]))
        message = (
            f"met the goal: {int(best['bytes']):,} bytes, accuracy {best['accuracy']:.4f} "
            f"(drop {100 * (dense_acc - best['accuracy']):.2f} pp)"
        )
    else:

        def badness(r: dict[str, Any]) -> float:
            m = r["miss"]
            rel_b = m["bytes"] / cfg.max_bytes if cfg.max_bytes else 0.0
            rel_l = m["latency_ms"] / cfg.max_latency_ms if cfg.max_latency_ms else 0.0
            return rel_b + rel_l + m["accuracy_pp"] / 100

        best = min(rows, key=badness)
        parts = [f"{k} by {v:,.3g}" for k, v in best["miss"].items() if v > 0]
        message = (
            f"no trial met every goal; the closest (trial {best['number']}) missed "
            + ", ".join(parts)
        )
    shutil.copyfile(out / "trials" / f"trial_{best['number']}.slim", out / "best.slim")
    front = [
        rows[i] for i in pareto_front([(r["accuracy"], r["bytes"]) for r in rows], [True, False])
    ]
    result = AutoCompressResult(
        bool(feasible), best, str(out / "best.slim"), front, rows, dense_acc, message
    )
    atomic.write_json(out / "auto_compress.json", dataclasses.asdict(result))
    return result
