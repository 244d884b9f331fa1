"""Hyperparameter optimisation on Optuna: training hyperparameters (lr, batch size, weight decay,
epochs) and compression hyperparameters (sparsity, bits, KD temperature/alpha), TPE by default,
bad trials pruned early (median or hyperband), multi-objective with NSGA-II.

A parameter is declared as a list (categorical) or ``{low, high, log}`` (float range)::

    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": [32, 64, 128],
             "weight_decay": {"low": 0.0, "high": 0.1}, "epochs": [2, 4],
             "sparsity": {"low": 0.5, "high": 0.95}, "bits": [2, 3, 4, 8]}

The objective trains the zoo model with the trial's values, reports accuracy after every epoch
(so the pruner can stop a bad trial); with a ``teacher`` (a trained slimkit model file or .onnx)
it trains by logit distillation instead, at the trial's ``temperature``/``alpha`` (which need
one), and records the student's top-1 agreement with the teacher. Then, when ``sparsity``/``bits`` are in the space, prunes
(magnitude) and quantizes (k-means) it and reports accuracy and bytes of the written artifact.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

from slimkit.config import SlimConfig, check_int, check_range, parse_enum
from slimkit.errors import ConfigError, import_extra

TRAIN_KEYS = {"lr", "batch_size", "weight_decay", "epochs"}
COMPRESS_KEYS = {"sparsity", "bits", "temperature", "alpha"}

# What each parameter's values must be (the rules of TrainConfig, the data loader,
# MagnitudePruning and KMeansQuantization): whole numbers take a list of choices only, since a
# float range would be truncated and never reach its high end.
INT_RULES = {"batch_size": (1, 65_536), "epochs": (1, 10_000), "bits": (1, 8)}
# name -> (low, high, low_open, high_open)
FLOAT_RULES = {
    "lr": (0.0, 10.0, True, False),
    "weight_decay": (0.0, 1.0, False, False),
    "sparsity": (0.0, 1.0, False, True),
    "temperature": (0.0, 100.0, True, False),
    "alpha": (0.0, 1.0, False, False),
}


def check_space(space: Any) -> None:
    """Every parameter known, declared as a list or ``{low, high, log}``, every value allowed."""
    valid = sorted(TRAIN_KEYS | COMPRESS_KEYS)
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            "an hpo space must map parameter names to a list of choices or {low, high, log}, "
            f"e.g. {{lr: {{low: 1e-4, high: 1e-2, log: true}}, epochs: [1, 2]}}, but got {space!r}"
        )
    unknown = [k for k in space if k not in TRAIN_KEYS | COMPRESS_KEYS]
    if unknown:
        raise ConfigError(f"hpo space has unknown parameter(s) {unknown}; valid: {valid}")
    for name, spec in space.items():
        if isinstance(spec, (list, tuple)) and len(spec) > 0:
            for value in spec:
                _check_value(name, value, f"choice {value!r} of {name!r}")
            continue
        ok_range = (
            isinstance(spec, dict)
            and set(spec) <= {"low", "high", "log"}
            and {"low", "high"} <= set(spec)
        )
        if not ok_range:
            raise ConfigError(
                f"hpo parameter {name!r} must be a list of choices or {{low, high, log}}, but got {spec!r}"
            )
        if name in INT_RULES:
            raise ConfigError(
                f"hpo parameter {name!r} takes whole numbers, so it must be a list of choices "
                f"(e.g. [{spec['low']}, {spec['high']}]), but got the range {spec!r}"
            )
        for end in ("low", "high"):
            v = spec[end]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} {end} must be a finite number, but got {v!r}")
        if not spec["low"] <= spec["high"]:
            raise ConfigError(
                f"`low <= high` must hold for {name!r}, but got (low={spec['low']}, high={spec['high']})"
            )
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{name} log must be true or false, but got {log!r}")
        if log and not spec["low"] > 0:
            raise ConfigError(
                f"`low > 0` must hold for {name!r} on a log scale (log: true), but got "
                f"(low={spec['low']}, high={spec['high']}); give a positive low such as 1e-5, "
                "or set log: false"
            )
        for end in ("low", "high"):
            _check_value(name, spec[end], f"{name} {end}")


def _check_value(name: str, value: Any, label: str) -> None:
    if name in INT_RULES:
        lo, hi = INT_RULES[name]
        check_int(label, value, lo, hi)
    else:
        low, high, low_open, high_open = FLOAT_RULES[name]
        check_range(label, value, low, high, low_open=low_open, high_open=high_open)


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
    strategy: str = "tpe"  # two objectives: NSGA-II (said when chosen; this default quietly)
    # "median" | "hyperband" | "none"; unused with two objectives (said when chosen)
    pruner: str = "median"
    objectives: tuple[str, ...] = ("accuracy",)  # or ("accuracy", "bytes")
    seed: int = 0
    max_batches: int | None = None
    sampler_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: str | None = None  # trained model file or .onnx: trials train by logit KD

    def validate(self) -> None:
        from slimkit.models.zoo import zoo_names
        from slimkit.search.samplers import Strategy

        check_int("n_trials", self.n_trials, 1, 100_000)
        if self.model not in zoo_names():
            raise ConfigError(f"unknown zoo model {self.model!r}; valid names are {zoo_names()}")
        check_space(self.space)
        kd = sorted(k for k in ("temperature", "alpha") if k in self.space)
        if kd and self.teacher is None:
            raise ConfigError(
                f"hpo parameter(s) {kd} tune knowledge distillation, which needs a teacher; "
                "pass --teacher <trained model file or .onnx> (HPOConfig.teacher), or drop them"
            )
        if self.teacher is not None and not Path(self.teacher).is_file():
            raise ConfigError(
                f"teacher {self.teacher!r} is not an existing file; pass a trained slimkit model "
                "file (.safetensors / .slim) or an .onnx file (a worker joining a study needs "
                "the study's teacher at that same path)"
            )
        parse_enum(Strategy, self.strategy, "strategy")
        from slimkit.data import dataset_names
        from slimkit.search.samplers import check_sampler_options

        check_sampler_options(self.strategy, self.sampler_options)
        if self.dataset not in dataset_names():
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; valid names are {dataset_names()}"
            )
        if self.max_batches is not None:
            check_int("max_batches", self.max_batches, 1, 10**9)
        if self.pruner not in ("median", "hyperband", "none"):
            raise ConfigError(
                f"pruner must be one of ['median', 'hyperband', 'none'], but got {self.pruner!r}"
            )
        if self.objectives not in (("accuracy",), ("accuracy", "bytes")):
            raise ConfigError(
                f"objectives must be ['accuracy'] or ['accuracy', 'bytes'], but got {list(self.objectives)}"
            )
        if "bytes" in self.objectives and not {"sparsity", "bits"} & set(self.space):
            # bytes are those of the pruned/quantized .slim: with neither knob no trial writes
            # one, and every trial would report 0 bytes
            raise ConfigError(
                "objective 'bytes' needs 'sparsity' or 'bits' in the space (bytes are measured "
                "on the pruned/quantized .slim artifact), but the space has only "
                f"{sorted(self.space)}; add e.g. bits: [4, 8] or sparsity: {{low: 0.5, high: 0.9}}, "
                "or use objectives ['accuracy']"
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

    teacher = _load_teacher(cfg)

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

        if teacher is None:
            train(model, data, tc, on_epoch_end=report, description="hpo trial")
        else:
            from slimkit.distillation import DistillConfig, LogitKD, agreement, distill

            kd = LogitKD(
                temperature=float(p.get("temperature", 4.0)), alpha=float(p.get("alpha", 0.9))
            )
            distill(
                model, teacher, data, DistillConfig(losses=(kd,), train=tc), on_epoch_end=report
            )
            trial.set_user_attr("teacher_agreement", agreement(model, teacher, data.test))
        acc = evaluate_accuracy(model, data.test)
        trial.set_user_attr("dense_accuracy", acc)
        nbytes = compress_and_measure(model, p)
        if nbytes is not None:
            acc = evaluate_accuracy(model, data.test)
            trial.set_user_attr("bytes", nbytes)
        trial.set_user_attr("accuracy", acc)
        if len(cfg.objectives) > 1:
            assert nbytes is not None  # validate: 'bytes' needs sparsity or bits in the space
            return acc, float(nbytes)
        return acc

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


def _load_teacher(cfg: HPOConfig):
    """The KD teacher, loaded once for all trials (None without one)."""
    if cfg.teacher is None:
        return None
    from slimkit.distillation import as_teacher

    return as_teacher(cfg.teacher)


def check_runs(cfg: HPOConfig) -> None:
    """The dataset loads and the model (and teacher) run on its images (ConfigError otherwise)."""
    import torch

    from slimkit.data import load_dataset
    from slimkit.errors import SlimkitError
    from slimkit.models import build_model

    data = load_dataset(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg.model, image_size=data.input_shape[-1], seed=cfg.seed)
    teacher = _load_teacher(cfg)
    if teacher is not None:
        try:
            teacher(data.example_input(1))
        except SlimkitError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"teacher {cfg.teacher!r} does not run on {cfg.dataset!r} images of shape "
                f"{tuple(data.input_shape)}: {str(exc).splitlines()[0]}; pass a teacher trained "
                "on that dataset"
            ) from None
    try:
        with torch.no_grad():
            model.eval()(data.example_input(1))
    except SlimkitError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"zoo model {cfg.model!r} does not run on {cfg.dataset!r} images of shape "
            f"{tuple(data.input_shape)}: {str(exc).splitlines()[0]}; pick another --model or dataset"
        ) from None


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
    check_runs(cfg)  # bad input fails here, before a study (or a database) is created
    dirs = ["maximize"] if len(cfg.objectives) == 1 else ["maximize", "minimize"]
    task = {"kind": "hpo", "config": cfg.to_dict()}
    if len(dirs) > 1 and cfg.pruner not in ("none", HPOConfig.pruner):  # a chosen one: said
        import warnings

        from slimkit.search.study import StrategyReplacedWarning

        warnings.warn(
            f"pruner {cfg.pruner!r} is not used: Optuna prunes single-objective studies only, "
            f"and this one has objectives {list(cfg.objectives)}",
            StrategyReplacedWarning,
            stacklevel=2,
        )
    pruner = make_pruner(cfg.pruner if len(dirs) == 1 else "none")
    objective = make_objective(cfg)  # before the study: a failure here leaves no empty study
    study = open_study(study_name, storage, dirs, task, sampler=sampler, pruner=pruner)
    check_teacher_file(study, cfg)
    run_until(study, objective, cfg.n_trials)
    return study


TEACHER_SHA_ATTR = "slimkit_teacher_sha256"


def check_teacher_file(study: Any, cfg: HPOConfig) -> None:
    """The teacher file's contents are the study's: the first run records their SHA-256, and a
    resume or a worker whose file at that path differs (retrained in place, another machine's
    copy) is refused; the path alone let trials of two teachers mix. Studies made before this
    record nothing and are left as they are until a run records it."""
    if cfg.teacher is None:
        return
    from slimkit.search.autocompress import file_sha256

    sha = file_sha256(cfg.teacher)
    recorded = study.user_attrs.get(TEACHER_SHA_ATTR)
    if recorded is None:
        study.set_user_attr(TEACHER_SHA_ATTR, sha)
    elif recorded != sha:
        raise ConfigError(
            f"the teacher file {cfg.teacher!r} is not the one study {study.study_name!r} was run "
            f"with (SHA-256 {sha[:12]}... vs recorded {recorded[:12]}...); put that file back, "
            "or start a new --study for this teacher"
        )
