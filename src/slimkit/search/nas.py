"""Neural architecture search over :class:`~slimkit.search.spaces.SearchSpace` with Optuna.

Each trial builds ``searchnet`` from the sampled choices, trains it briefly, and measures
accuracy, parameters, FLOPs and (optionally) ONNX Runtime latency. Single-objective searches
maximise accuracy under an optional parameter cap (a trial over the cap scores below every
trial within it, the lower the further over: :func:`capped_score`); multi-objective searches (NSGA-II) return the
Pareto front of accuracy vs params/FLOPs/latency.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from slimkit.config import SlimConfig, check_int, check_range, parse_enum
from slimkit.errors import ConfigError
from slimkit.models.zoo import OPTION_RULES, SEARCHNET_BLOCKS
from slimkit.search.pareto import pareto_front
from slimkit.search.spaces import DEFAULT_NAS_SPACE, SearchSpace

OBJECTIVES = ("accuracy", "params", "flops", "latency_ms")

# SearchNet's choices and the values each may take: the zoo's own rules for it (one place).
SEARCHNET_INTS = OPTION_RULES["searchnet"]


def check_space(space: SearchSpace) -> None:
    """Every choice is one of SearchNet's and every option builds a SearchNet (ConfigError)."""
    valid = [*SEARCHNET_INTS, "block"]
    unknown = [n for n in space.choices if n not in valid]
    if unknown:
        raise ConfigError(f"NAS space has unknown choice(s) {unknown}; SearchNet takes {valid}")
    for name, options in space.choices.items():
        for o in options:
            if name == "block":
                if o not in SEARCHNET_BLOCKS:
                    raise ConfigError(
                        f"option {o!r} of choice 'block' is not a block type; valid: {list(SEARCHNET_BLOCKS)}"
                    )
            else:
                check_int(f"option {o!r} of choice {name!r}", o, *SEARCHNET_INTS[name])
    blocks = space.choices.get("block", ("plain",))
    even = [k for k in space.choices.get("kernel", ()) if isinstance(k, int) and k % 2 == 0]
    if even and "residual" in blocks:
        raise ConfigError(
            f"kernel options {even} are even, but the 'residual' block needs an odd kernel (it "
            "pads kernel//2, so an even kernel changes the image size and the shortcut no longer "
            "fits); use odd kernels such as [3, 5] or drop 'residual' from block"
        )


@dataclasses.dataclass(frozen=True)
class NASConfig(SlimConfig):
    dataset: str = "digits"
    epochs: int = 2
    lr: float = 3e-3
    n_trials: int = 20
    # With more than one objective, evolution/reinforce/tpe run as NSGA-II (a chosen one with
    # a StrategyReplacedWarning; this default quietly).
    strategy: str = "evolution"
    objectives: tuple[str, ...] = ("accuracy",)
    max_params: int | None = None
    seed: int = 0
    measure_latency: bool = False
    # Evolution without a population here gets one from n_trials (samplers.default_population:
    # min(20, max(4, n_trials // 3))), recorded in the study when it is created.
    sampler_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        from slimkit.search.samplers import Strategy

        check_int("epochs", self.epochs, 1, 1000)
        check_int("n_trials", self.n_trials, 1, 100_000)
        check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        parse_enum(Strategy, self.strategy, "strategy")
        from slimkit.data import dataset_names
        from slimkit.search.samplers import check_sampler_options

        check_sampler_options(self.strategy, self.sampler_options)
        if self.dataset not in dataset_names():
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; valid names are {dataset_names()}"
            )
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or bad or self.objectives[0] != "accuracy":
            raise ConfigError(
                f"objectives must start with 'accuracy' and use only {list(OBJECTIVES)}, "
                f"but got {list(self.objectives)}"
            )
        repeated = sorted({o for o in self.objectives if self.objectives.count(o) > 1})
        if repeated:
            raise ConfigError(
                f"objectives must each appear once, but got {list(self.objectives)} "
                f"({repeated} repeated); list each objective once, e.g. accuracy,params"
            )
        if self.max_params is not None:
            check_int("max_params", self.max_params, 1, 10**12)
            if len(self.objectives) > 1:
                raise ConfigError(
                    "max_params caps a single-objective search (objectives ['accuracy']), but "
                    f"got objectives {list(self.objectives)}; drop max_params, or keep 'params' "
                    "as an objective and read the Pareto front"
                )
        if "latency_ms" in self.objectives and not self.measure_latency:
            object.__setattr__(self, "measure_latency", True)


def evaluate_architecture(
    params: dict[str, Any], data, *, epochs: int, lr: float, seed: int, measure_latency: bool
) -> dict[str, float]:
    """Train ``searchnet(**params)`` on ``data`` and measure it: accuracy, params, FLOPs, latency."""
    from slimkit.metrics import count_flops, count_params
    from slimkit.models import build_model
    from slimkit.training import TrainConfig, evaluate_accuracy, train

    size = data.input_shape[-1]
    model = build_model("searchnet", image_size=size, seed=seed, **params)
    train(model, data, TrainConfig(epochs=epochs, lr=lr, seed=seed), description="nas trial")
    x = data.example_input(1)
    out = {
        "accuracy": evaluate_accuracy(model, data.test),
        "params": float(count_params(model)),
        "flops": float(count_flops(model, x)),
    }
    if measure_latency:
        import tempfile
        from pathlib import Path

        from slimkit.export.onnx import to_onnx
        from slimkit.metrics import ort_latency

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            to_onnx(model, path, x)
            out["latency_ms"] = ort_latency(path, x, 1, threads=1, runs=20).median_ms
    return out


def capped_score(accuracy: float, params: float, cap: float | None) -> float:
    """Accuracy within the cap; below every feasible score over it, lower the further over.

    The graded penalty (not a flat -1) tells guided samplers which way the cap lies.
    """
    if cap is None or params <= cap:
        return accuracy
    return accuracy - 1.0 - (params / cap - 1.0)


def directions(cfg: NASConfig) -> list[str]:
    return ["maximize"] + ["minimize"] * (len(cfg.objectives) - 1)


def make_objective(space: SearchSpace, data, cfg: NASConfig):
    def objective(trial) -> float | tuple[float, ...]:
        params = space.suggest(trial)
        measured = evaluate_architecture(
            params,
            data,
            epochs=cfg.epochs,
            lr=cfg.lr,
            seed=cfg.seed,
            measure_latency=cfg.measure_latency,
        )
        for k, v in measured.items():
            trial.set_user_attr(k, v)
        if len(cfg.objectives) > 1:
            return tuple(measured[o] for o in cfg.objectives)
        over = cfg.max_params is not None and measured["params"] > cfg.max_params
        trial.set_user_attr("within_cap", not over)
        return capped_score(measured["accuracy"], measured["params"], cfg.max_params)

    return objective


@dataclasses.dataclass
class NASResult:
    study_name: str
    best: dict[str, Any]
    pareto: list[dict[str, Any]]
    trials: list[dict[str, Any]]


def summarize(study, cfg: NASConfig) -> NASResult:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    rows = [{"number": t.number, "arch": dict(t.params), **t.user_attrs} for t in done]
    if not rows:
        raise ConfigError(f"study {study.study_name!r} has no finished trial yet")
    objs = list(cfg.objectives) if len(cfg.objectives) > 1 else ["accuracy", "params"]
    front_idx = pareto_front([[r[o] for o in objs] for r in rows], [o == "accuracy" for o in objs])
    eligible = [r for r in rows if cfg.max_params is None or r["params"] <= cfg.max_params]
    if eligible:
        best = max(eligible, key=lambda r: (r["accuracy"], -r["params"]))
    else:  # nothing within the cap: the trial nearest to it (best capped score), within_cap False
        best = max(rows, key=lambda r: capped_score(r["accuracy"], r["params"], cfg.max_params))
    return NASResult(study.study_name, best, [rows[i] for i in front_idx], rows)


def data_label(data) -> str:
    """What a study records as the data of ``nas(data, ...)``: the DataBundle's name (the
    packaged dataset's for load_dataset, the caller's for from_tensors/from_loaders, whose
    defaults are 'tensors' and 'loaders'), or 'custom data' for an object without one."""
    name = getattr(data, "name", None)
    return name if isinstance(name, str) and name else "custom data"


def nas(
    data=None,
    cfg: NASConfig | None = None,
    *,
    space: SearchSpace = DEFAULT_NAS_SPACE,
    sampler=None,
    storage: str | None = None,
    study_name: str = "slimkit-nas",
) -> NASResult:
    """Run (or resume) a NAS study; returns the best architecture and the Pareto front."""
    from slimkit.search.study import open_study, run_until

    cfg = cfg or NASConfig()
    check_space(space)  # bad input fails here, before a study (or a database) is created
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if data is None:
        from slimkit.data import load_dataset

        data = load_dataset(cfg.dataset)
        label = cfg.dataset
    else:
        label = data_label(data)
    task = {
        "kind": "nas",
        # The data the trials train on: cfg.dataset is not loaded when data is given.
        "config": {**cfg.to_dict(), "dataset": label},
        "space": {k: list(v) for k, v in space.choices.items()},
    }
    objective = make_objective(space, data, cfg)  # before the study (no empty study on failure)
    study = open_study(study_name, storage, directions(cfg), task, sampler=sampler)
    run_until(study, objective, cfg.n_trials)
    return summarize(study, cfg)
