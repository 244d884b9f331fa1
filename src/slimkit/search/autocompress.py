"""Auto-compress: the most accurate ``.slim`` artifact within a size and/or latency budget.

A constrained single-objective search: maximise the artifact's accuracy subject to bytes <=
``max_bytes`` (and latency <= ``max_latency_ms``), with Optuna's TPE and trial constraints
(infeasible trials rank by how far they are over). Per layer group
(:func:`slimkit.search.budget.layer_groups`) a trial picks a final sparsity, k-means bits and,
when ranks are searched, an SVD rank; :mod:`slimkit.search.compress_trial` applies them with
gradual pruning + fine-tuning, k-means and centroid fine-tuning. The budget shapes the search
(:mod:`slimkit.search.budget`): trial 0 is a global-magnitude choice that fills ``fill`` of the
byte budget, each group's sparsity range starts where it could still fit, a choice whose untrained
artifact is already over budget is measured as it is instead of trained, and a trial whose
accuracy falls far below the goal during pruning stops fine-tuning there.

Every trial writes its real artifact; bytes on disk, accuracy of the artifact loaded back, and
ORT latency (when budgeted) are what count. The answer is the most accurate trial within every
budget and the accuracy drop, else the trial closest to the goal with the amount it missed by,
plus the Pareto front over (accuracy, bytes). Trials live in the Optuna storage, so calling again
with the same storage, study name and options resumes the search.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.config import SlimConfig, check_int, check_range, select_modules
from slimkit.errors import ConfigError

# The rank search `slimkit search auto --max-latency-ms` runs unless --rank-ratios is given:
# sparsity and k-means bits leave the exported model's dense matmuls (so its ORT latency) as
# they are; only an SVD rank below 1.0 makes a Linear cheaper to run. 1.0 keeps trial 0 full rank.
LATENCY_RANK_RATIOS = (1.0, 0.5, 0.25)


@dataclasses.dataclass(frozen=True)
class AutoCompressConfig(SlimConfig):
    max_bytes: int | None = None
    max_latency_ms: float | None = None  # ORT, batch 1, 2 threads
    max_accuracy_drop: float = 0.005  # fraction: 0.005 = 0.5 pp
    n_trials: int = 20
    bits: tuple[int, ...] = (3, 4, 5, 6)
    max_sparsity: float = 0.99
    # add e.g. 0.5, 0.25 to search SVD ranks of Linears: the only knob that moves latency
    rank_ratios: tuple[float, ...] = (1.0,)
    max_groups: int = 4  # the largest layers get their own knobs, the rest share one group
    prune_steps: int = 4  # AGP steps to the final sparsity
    finetune_epochs: int = 2  # after each pruning step, masks held
    lr: float = 1e-3
    centroid_epochs: int = 2  # k-means centroid fine-tuning
    centroid_lr: float = 1e-4
    startup_trials: int = 5  # TPE's random trials before it models the results (trial 0 aside)
    fill: float = 0.9  # trial 0 aims at this fraction of max_bytes
    over_budget_slack: float = 0.03  # untrained artifact over max_bytes * (1 + this): not trained
    hopeless_drop: float = 0.01  # stop fine-tuning when the drop passes max_accuracy_drop + this
    max_batches: int | None = None
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
        if not self.bits:
            raise ConfigError("bits must list at least one bit width, but got an empty list")
        for b in self.bits:
            check_int("bits[]", b, 1, 8)
        check_range("max_sparsity", self.max_sparsity, 0.0, 1.0, high_open=True)
        for r in self.rank_ratios:
            check_range("rank_ratios[]", r, 0.0, 1.0, low_open=True)
        check_int("max_groups", self.max_groups, 1, 10_000)
        check_int("prune_steps", self.prune_steps, 1, 1000)
        check_int("finetune_epochs", self.finetune_epochs, 0, 10_000)
        check_int("centroid_epochs", self.centroid_epochs, 0, 10_000)
        check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("centroid_lr", self.centroid_lr, 0.0, 10.0, low_open=True)
        check_int("startup_trials", self.startup_trials, 0, 100_000)
        check_range("fill", self.fill, 0.0, 1.0, low_open=True)
        check_range("over_budget_slack", self.over_budget_slack, 0.0, 10.0)
        check_range("hopeless_drop", self.hopeless_drop, 0.0, 1.0)


@dataclasses.dataclass
class AutoCompressResult:
    met: bool
    best: dict[str, Any]
    artifact: str
    pareto: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    dense_accuracy: float
    message: str


STUDY_MARKER = ".slimkit-study"  # the name of the study whose trials and best.slim OUT holds


def _check_out_is_this_studys(out: Path, study_name: str, source: dict | None) -> None:
    """Refuse an ``out`` that another study's run wrote (its trial_N.slim and best.slim would
    be overwritten: the natural next step after "created for another task" is a new --study
    with the same --out), or that holds the model file being compressed."""
    marker = out / STUDY_MARKER
    if marker.is_file():
        owner = marker.read_text(encoding="utf-8", errors="replace").strip()
        if owner != study_name:
            raise ConfigError(
                f"{str(out)!r} holds the trials and best.slim of study {owner!r}; study "
                f"{study_name!r} would overwrite them: give it another --out"
            )
    model = (source or {}).get("model")
    if model is not None:
        path, root = Path(model).resolve(), out.resolve()
        written = {root / "best.slim", root / "auto_compress.json", root / STUDY_MARKER}
        if path in written or root / "trials" in path.parents:
            raise ConfigError(
                f"the model file {model!r} is one the run writes into --out {str(out)!r} "
                "(best.slim, auto_compress.json or trials/): it would be overwritten and "
                "every resume refused; move the model or choose another --out"
            )


def measure(model: nn.Module, data, folder: Path, cfg: AutoCompressConfig) -> dict[str, float]:
    from slimkit.export import slimformat
    from slimkit.training import evaluate_accuracy

    # Accuracy of the artifact as a user gets it: the file loaded back.
    nbytes = slimformat.save(model, folder / "model.slim")
    out = {
        "bytes": float(nbytes),
        "accuracy": evaluate_accuracy(slimformat.load(folder / "model.slim"), data.test),
    }
    if cfg.max_latency_ms is not None:
        from slimkit.export.onnx import to_onnx
        from slimkit.metrics import ort_latency

        x = data.example_input(1)
        to_onnx(model, folder / "model.onnx", x, atol=1e-3)
        out["latency_ms"] = ort_latency(folder / "model.onnx", x, 1, threads=2, runs=20).median_ms
    return out


# An accuracy drop within this many percentage points over the limit meets it: a drop of exactly
# the limit must not fail on rounding (0.97 - 0.965 as float32 means was 0.5000055 pp; accuracies
# are exact fractions now, see evaluate_accuracy, but figures from elsewhere may not be). 1e-4 pp
# is less than one test sample for any test set under a million samples.
ACCURACY_TOLERANCE_PP = 1e-4


def shortfall(row: dict[str, float], cfg: AutoCompressConfig, dense_acc: float) -> dict[str, float]:
    """How far a trial misses each goal (0 = met): bytes over, ms over, accuracy drop pp over
    (a drop within ACCURACY_TOLERANCE_PP of the limit meets it)."""
    miss = {"bytes": 0.0, "latency_ms": 0.0, "accuracy_pp": 0.0}
    if cfg.max_bytes is not None:
        miss["bytes"] = max(0.0, row["bytes"] - cfg.max_bytes)
    if cfg.max_latency_ms is not None:
        miss["latency_ms"] = max(0.0, row["latency_ms"] - cfg.max_latency_ms)
    over_pp = 100 * (dense_acc - row["accuracy"] - cfg.max_accuracy_drop)
    miss["accuracy_pp"] = over_pp if over_pp > ACCURACY_TOLERANCE_PP else 0.0
    return miss


def describe_miss(miss: dict[str, float]) -> str:
    """A shortfall in words with its units, e.g. 'the size budget by 1,204 bytes, the accuracy
    drop limit by 0.31 pp'."""
    parts = []
    if miss.get("bytes", 0.0) > 0:
        parts.append(f"the size budget by {miss['bytes']:,.0f} bytes")
    if miss.get("latency_ms", 0.0) > 0:
        parts.append(f"the latency budget by {miss['latency_ms']:.3g} ms")
    if miss.get("accuracy_pp", 0.0) > 0:
        parts.append(f"the accuracy drop limit by {miss['accuracy_pp']:.3g} pp")
    return ", ".join(parts)


def default_sampler(cfg: AutoCompressConfig):
    """Multivariate TPE seeded with ``cfg.seed`` (open_study reseeds it for workers/resumes)."""
    import optuna

    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=cfg.seed,
            n_startup_trials=cfg.startup_trials,
            multivariate=True,
        )


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256: a study records the model file it compresses by path and contents."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(model: nn.Module, data, cfg: AutoCompressConfig):
    """Check the inputs and plan the budget: ``(layers, plan)``. Deterministic, so a worker that
    loads the same model file gets the coordinator's plan."""
    from slimkit.preconditions import check_fits, check_model
    from slimkit.search.budget import plan_budget

    check_model(model, "auto_compress")
    check_fits(model, data, "auto_compress")
    layers = select_modules(model, cfg.targets, cfg.ignore, types=(nn.Linear, nn.Conv2d))
    return layers, plan_budget(model, layers, cfg)


def budget_overshoot(row: dict[str, float], cfg: AutoCompressConfig) -> dict[str, float]:
    """Each budget's relative overshoot (<= 0: within it)."""
    over = {}
    if cfg.max_bytes is not None:
        over["bytes"] = (row["bytes"] - cfg.max_bytes) / cfg.max_bytes
    if cfg.max_latency_ms is not None:
        over["latency_ms"] = (row["latency_ms"] - cfg.max_latency_ms) / cfg.max_latency_ms
    return over


def searches_rank(cfg: AutoCompressConfig, layers: dict[str, nn.Module], names: list[str]) -> bool:
    """Whether a group gets a rank knob: ranks are searched and the group has a Linear."""
    return len(cfg.rank_ratios) > 1 and any(isinstance(layers[n], nn.Linear) for n in names)


def make_objective(
    model: nn.Module,
    data,
    cfg: AutoCompressConfig,
    plan,
    layers: dict[str, nn.Module],
    dense_acc: float,
    out: str | Path,
):
    """The per-trial objective (accuracy of the written artifact) shared by :func:`auto_compress`
    and ``slimkit search worker``; trial N's artifact is ``out/trials/trial_N.slim``."""
    from slimkit.search.budget import GRID, choice_bytes
    from slimkit.search.compress_trial import compress_trial
    from slimkit.training import evaluate_accuracy

    trials_dir = Path(out) / "trials"

    def objective(trial) -> float:
        choice: dict[str, Any] = {}
        for g, names in plan.groups.items():
            if searches_rank(cfg, layers, names):
                choice[f"rank_{g}"] = trial.suggest_categorical(f"rank_{g}", list(cfg.rank_ratios))
            choice[f"sparsity_{g}"] = trial.suggest_float(
                f"sparsity_{g}", plan.low[g], plan.high, step=GRID
            )
            choice[f"bits_{g}"] = trial.suggest_categorical(f"bits_{g}", list(cfg.bits))
        train = True
        if cfg.max_bytes is not None:
            untrained = choice_bytes(model, plan.groups, choice)
            trial.set_user_attr("untrained_bytes", untrained)
            # Fine-tuning keeps masks and bits: an artifact this far over stays over.
            train = untrained <= cfg.max_bytes * (1 + cfg.over_budget_slack)

        def hopeless(step: int, m: nn.Module) -> bool:
            acc = evaluate_accuracy(m, data.test)
            trial.report(acc, step)
            return dense_acc - acc > cfg.max_accuracy_drop + cfg.hopeless_drop

        compressed, stopped = compress_trial(
            model, data, plan.groups, choice, cfg, train=train, check=hopeless
        )
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(compressed, data, Path(tmp), cfg)
            artifact = trials_dir / f"trial_{trial.number}.slim"
            shutil.copyfile(Path(tmp) / "model.slim", artifact)
        stage = "trained"
        if not train:
            stage = "over budget before training: measured untrained"
        elif stopped is not None:
            stage = f"hopeless after pruning step {stopped}: fine-tuning stopped"
        attrs = {
            **row,
            "stage": stage,
            "artifact": str(artifact.resolve()),
            "artifact_sha256": file_sha256(artifact),  # checked before it becomes best.slim
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        # TPE ranks infeasible trials below feasible ones, by total overshoot.
        for k, v in budget_overshoot(row, cfg).items():
            trial.set_constraint(k, v)
        return row["accuracy"]

    return objective


# How each source key is named to the user when a resumed CLI run differs from its study.
_SOURCE_KEYS = {
    "model": "the model file",
    "sha256": "the model file's contents (SHA-256)",
    "dataset": "--dataset",
    "batch_size": "the batch size",
    "image_size": "the image size",
    "out": "--out (absolute)",
}


def _check_same_source(study_name: str, storage: str | None, task: dict[str, Any]) -> None:
    """Refuse, naming it, a model file, data or output folder that differs from the one the
    study was created with, or a study that recorded no model file (open_study, which refused
    the task, only says "another task")."""
    from slimkit.search.study import load_task

    try:
        stored = load_task(study_name, storage)
    except ConfigError:  # no database or no such study yet: a new study
        return
    old = stored.get("source")
    if stored.get("kind") != "auto":
        return
    if not isinstance(old, dict):
        raise ConfigError(
            f"study {study_name!r} was made by auto_compress without a model file (from Python, "
            "or by a slimkit that did not record one), so 'slimkit search auto' and workers "
            "cannot reload its model; resume it from Python with auto_compress(model, data, "
            f"cfg, out, study_name={study_name!r}) as it was made, or use a new --study name "
            "with a new --out"
        )
    for key, label in _SOURCE_KEYS.items():
        if old.get(key) != task["source"].get(key):
            raise ConfigError(
                f"study {study_name!r} was created with {label} {old.get(key)!r}, but this run "
                f"gives {task['source'].get(key)!r}; resume it with the same model file, "
                "--dataset and --out (same absolute paths, unchanged model file), or use a new "
                "--study name with a new --out"
            )


def auto_compress(
    model: nn.Module,
    data,
    cfg: AutoCompressConfig,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    study_name: str = "slimkit-auto",
    sampler=None,
    source: dict[str, Any] | None = None,
) -> AutoCompressResult:
    """Search compression settings for ``model``; the chosen artifact is ``out_dir/best.slim``.

    ``source`` says where ``slimkit search worker`` reloads the model and the data: ``{"model":
    absolute file path, "sha256": its file_sha256, "dataset": name, "batch_size": int,
    "image_size": int}`` (``slimkit search auto`` passes it; the absolute ``out_dir`` is added).
    Without it (in-memory objects) the study is resumable by this call only, not by workers.
    """
    from slimkit import atomic
    from slimkit.search.pareto import pareto_front
    from slimkit.search.study import open_study, run_until
    from slimkit.training import evaluate_accuracy

    out = Path(out_dir)
    if cfg.max_latency_ms is not None and max(cfg.rank_ratios) == min(cfg.rank_ratios) == 1.0:
        warnings.warn(
            f"max_latency_ms={cfg.max_latency_ms:g} with rank_ratios={cfg.rank_ratios}: no "
            "searched setting changes latency (sparsity and k-means bits keep the dense "
            "matmuls), so the budget is only checked; to search SVD ranks, set rank_ratios="
            f"{LATENCY_RANK_RATIOS}",
            stacklevel=2,
        )
    # Inputs first: a bad model, data or target writes nothing (no empty out/trials left).
    layers, plan = prepare(model, data, cfg)
    atomic.output_dir(out / "trials", create=False)
    _check_out_is_this_studys(out, study_name, source)
    task: dict[str, Any] = {"kind": "auto", "config": cfg.to_dict(), "groups": plan.groups}
    if source is not None:
        keys = sorted(k for k in _SOURCE_KEYS if k != "out")
        if not isinstance(source, dict) or sorted(source) != keys:
            raise ConfigError(f"source must be a dict with the keys {keys}, but got {source!r}")
        task["source"] = {**source, "out": str(out.resolve())}
    try:
        study = open_study(
            study_name, storage, ["maximize"], task, sampler=sampler or default_sampler(cfg)
        )
    except ConfigError:
        if source is not None:  # say which of the model file, data or folder differs
            _check_same_source(study_name, storage, task)
        raise
    # After the study is open: a refused resume creates no folder and evaluates nothing.
    dense_acc = evaluate_accuracy(model.eval(), data.test)
    atomic.output_dir(out / "trials")
    atomic.write_text(out / STUDY_MARKER, study_name + "\n")
    if not study.trials:  # a new study (not a resume): trial 0 is the near-feasible start
        start = dict(plan.start)
        for g, names in plan.groups.items():
            if searches_rank(cfg, layers, names):
                start[f"rank_{g}"] = max(cfg.rank_ratios)  # full rank when 1.0 is listed
        study.enqueue_trial(start)

    objective = make_objective(model, data, cfg, plan, layers, dense_acc, out)
    torch.manual_seed(cfg.seed)
    run_until(study, objective, cfg.n_trials)
    from optuna.trial import TrialState

    rows = [
        {"number": t.number, "choice": dict(t.params), **t.user_attrs}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    if not rows:
        raise ConfigError(
            f"study {study_name!r} has no complete trial (every trial failed); see its log"
        )
    for r in rows:
        r["miss"] = shortfall(r, cfg, dense_acc)
    feasible = [r for r in rows if not any(r["miss"].values())]
    if feasible:
        best = max(feasible, key=lambda r: (r["accuracy"], -r["bytes"]))
        message = (
            f"met the goal: trial {best['number']}, {int(best['bytes']):,} bytes, accuracy "
            f"{best['accuracy']:.4f} (drop {100 * (dense_acc - best['accuracy']):.2f} pp)"
        )
    else:

        def badness(r: dict[str, Any]) -> float:
            m = r["miss"]
            rel_b = m["bytes"] / cfg.max_bytes if cfg.max_bytes else 0.0
            rel_l = m["latency_ms"] / cfg.max_latency_ms if cfg.max_latency_ms else 0.0
            return rel_b + rel_l + m["accuracy_pp"] / 100

        best = min(rows, key=badness)
        message = (
            f"no trial met every goal; the closest (trial {best['number']}) missed "
            + describe_miss(best["miss"])
        )
    chosen = Path(best["artifact"])
    if not chosen.is_file():
        raise ConfigError(
            f"the chosen trial {best['number']}'s artifact {chosen} is missing: a trial's "
            "artifact stays where the process that ran it (this one or a `slimkit search "
            "worker`) wrote it; pass the same out_dir, run the workers on a shared folder, or "
            f"copy that trial's file to {chosen}"
        )
    expected = best.get("artifact_sha256")
    if expected is not None and file_sha256(chosen) != expected:
        raise ConfigError(
            f"the chosen trial {best['number']}'s artifact {chosen} is not the file that trial "
            "wrote (its SHA-256 differs): another study wrote its trials into the same folder; "
            "give each study its own out_dir (--out) and rerun"
        )
    shutil.copyfile(chosen, out / "best.slim")
    front = [
        rows[i] for i in pareto_front([(r["accuracy"], r["bytes"]) for r in rows], [True, False])
    ]
    result = AutoCompressResult(
        bool(feasible), best, str(out / "best.slim"), front, rows, dense_acc, message
    )
    atomic.write_json(out / "auto_compress.json", dataclasses.asdict(result))
    return result
