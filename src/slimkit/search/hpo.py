"""Hyperparameter optimisation on Optuna: training hyperparameters (lr, batch size, weight decay,
epochs) and compression hyperparameters (sparsity, bits, KD temperature/alpha), TPE by default,
bad trials pruned early (median or hyperband), multi-objective with NSGA-II.

A parameter is declared as a list (categorical) or ``{low, high, log}`` (float range)::

    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": [32, 64, 128],
             "weight_decay": {"low": 0.0, "high": 0.1}, "epochs": [2, 4],
             "sparsity": {"low": 0.5, "high": 0.95}, "bits": [2, 3, 4, 8]}

The objective trains the zoo model with the trial's values, reports accuracy after every epoch
(so the pruner can stop a bad trial), then, when ``sparsity``/``bits`` are in the space, prunes
(magnitude) and quantizes (k-means) it and reports accuracy and bytes of the written artifact.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from slimkit.config import SlimConfig, check_int
from slimkit.errors import ConfigError, import_extra

TRAIN_KEYS = {"lr", "batch_size", "weight_decay", "epochs"}
COMPRESS_KEYS = {"sparsity", "bits", "temperature", "alpha"}


@dataclasses.dataclass(frozen=True)
class HPOConfig(SlimConfig):
    model: str = "lenet5"
    dataset: str = "digits"
    space: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "epochs": [1, 2, 3],
        }
    )
    n_trials: int = 10
    strategy: str = "tpe"
    pruner: str = "median"  # "median" | "hyperband" | "none"
    objectives: tuple[str, ...] = ("accuracy",)  # or ("accuracy", "bytes")
    seed: int = 0
    max_batches: int | None = None
    sampler_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        check_int("n_trials", self.n_trials, 1, 100_000)
        unknown = sorted(set(self.space) - TRAIN_KEYS - COMPRESS_KEYS)
        if unknown:
            raise ConfigError(
                f"hpo space has unknown parameter(s) {unknown}; valid: {sorted(TRAIN_KEYS | COMPRESS_KEYS)}"
            )
        for name, spec in self.space.items():
            ok_range = (
                isinstance(spec, dict)
                and set(spec) <= {"low", "high", "log"}
                and {"low", "high"} <= set(spec)
            )
            ok_list = isinstance(spec, (list, tuple)) and len(spec) > 0
            if not (ok_range or ok_list):
                raise ConfigError(
                    f"hpo parameter {name!r} must be a list of choices or {{low, high, log}}, but got {spec!r}"
                )
            if ok_range and not spec["low"] <= spec["high"]:
                raise ConfigError(
                    f"`low <= high` must hold for {name!r}, but got (low={spec['low']}, high={spec['high']})"
                )
        if self.pruner not in ("median", "hyperband", "none"):
            raise ConfigError(
                f"pruner must be one of ['median', 'hyperband', 'none'], but got {self.pruner!r}"
            )
        if self.objectives not in (("accuracy",), ("accuracy", "bytes")):
            raise ConfigError(
                f"objectives must be ['accuracy'] or ['accuracy', 'bytes'], but got {list(self.objectives)}"
            )


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            out[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
        else:
            out[name] = trial.suggest_categorical(name, list(spec))
    return out


def make_pruner(name: str):
    optuna = import_extra("optuna", "search")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_objective(cfg: HPOConfig):
    optuna = import_extra("optuna", "search")
    from slimkit.data import load_dataset
    from slimkit.models import build_model
    from slimkit.training import TrainConfig, evaluate_accuracy, train

    def objective(trial):
        p = suggest(trial, cfg.space)
        data = load_dataset(cfg.dataset, batch_size=int(p.get("batch_size", 64)), seed=cfg.seed)
        model = build_model(cfg.model, image_size=data.input_shape[-1], seed=cfg.seed)
        tc = TrainConfig(
            epochs=int(p.get("epochs", 2)),
            lr=float(p.get("lr", 1e-3)),
            weight_decay=float(p.get("weight_decay", 0.0)),
            seed=cfg.seed,
            max_batches=cfg.max_batches,
        )

        def report(epoch: int, m) -> None:
            # Intermediate values let the median / hyperband pruner stop a bad trial early.
            if len(cfg.objectives) == 1:
                trial.report(evaluate_accuracy(m, data.test), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        train(model, data, tc, on_epoch_end=report, description="hpo trial")
        acc = evaluate_accuracy(model, data.test)
        trial.set_user_attr("dense_accuracy", acc)
        nbytes = compress_and_measure(model, p)
        if nbytes is not None:
            acc = evaluate_accuracy(model, data.test)
            trial.set_user_attr("bytes", nbytes)
        trial.set_user_attr("accuracy", acc)
        return (acc, float(nbytes or 0)) if len(cfg.objectives) > 1 else acc

    return objective


def compress_and_measure(model, p: dict[str, Any]) -> int | None:
    """Prune/quantize per the trial's compression values; bytes of the written .slim file."""
    if "sparsity" not in p and "bits" not in p:
        return None
    import slimkit as sk
    from slimkit.export import slimformat

    if "sparsity" in p:
        from slimkit.pruning.methods import METHODS as PRUNE

        sk.prune_(model, PRUNE["magnitude"].from_dict({"sparsity": float(p["sparsity"])}))
        from slimkit.pruning import finalize_

        finalize_(model)
    if "bits" in p:
        from slimkit.quantization.methods import METHODS as QUANT

        sk.quantize_(model, QUANT["kmeans"].from_dict({"bits": int(p["bits"])}))
    with tempfile.TemporaryDirectory() as tmp:
        return int(slimformat.save(model, Path(tmp) / "m.slim"))


def hpo(
    cfg: HPOConfig | None = None,
    *,
    storage: str | None = None,
    study_name: str = "slimkit-hpo",
    sampler=None,
):
    """Run (or resume) an HPO study; returns the Optuna study."""
    from slimkit.search.study import open_study, run_until

    cfg = cfg or HPOConfig()
    dirs = ["maximize"] if len(cfg.objectives) == 1 else ["maximize", "minimize"]
    task = {"kind": "hpo", "config": cfg.to_dict()}
    pruner = make_pruner(cfg.pruner if len(dirs) == 1 else "none")
    study = open_study(study_name, storage, dirs, task, sampler=sampler, pruner=pruner)
    run_until(study, make_objective(cfg), cfg.n_trials)
    return study
