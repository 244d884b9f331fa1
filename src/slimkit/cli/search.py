"""`slimkit search hpo|nas|auto|worker`: studies on SQLite by default, PostgreSQL to scale out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from slimkit.cli.common import console, print_table

# The searches choose their trial by accuracy on the data's test split and report that same
# figure: the chosen trial's is optimistic (it won on that split). Said, not hidden.
SELECTION_ACCURACY = "selection accuracy (test split)"
SELECTION_NOTE = (
    "note: trials are chosen by their accuracy on the test split, so the chosen trial's figure "
    "is optimistic; confirm it on data the search did not see"
)

search_app = typer.Typer(
    help="Hyperparameter optimisation, NAS and auto-compress on Optuna studies.",
    no_args_is_help=True,
)


@search_app.command("nas")
def nas_cmd(
    study: str = typer.Option("slimkit-nas", help="study name (resume by reusing it)"),
    storage: str = typer.Option(None, help="SQLAlchemy URL; default sqlite:///./slimkit-search.db"),
    dataset: str = typer.Option("digits"),
    strategy: str = typer.Option("evolution", help="random | evolution | reinforce | tpe | nsga2"),
    trials: int = typer.Option(20),
    epochs: int = typer.Option(2),
    max_params: int = typer.Option(None, help="parameter cap for single-objective search"),
    objectives: str = typer.Option("accuracy", help="comma list: accuracy,params,flops,latency_ms"),
    space: Path = typer.Option(None, help="YAML file mapping choice names to option lists"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(None, help="write the result (best, Pareto front, trials) as JSON"),
):
    """Neural architecture search over slimkit's SearchNet space."""
    from slimkit import atomic
    from slimkit.cli.common import refuse_overwrite
    from slimkit.search import DEFAULT_NAS_SPACE, NASConfig, SearchSpace, nas

    if out is not None:  # checked after every trial before, and could overwrite --space
        refuse_overwrite({"--space": str(space) if space else None}, {"--out": out})
    cfg = NASConfig(
        dataset=dataset,
        strategy=strategy,
        n_trials=trials,
        epochs=epochs,
        max_params=max_params,
        objectives=tuple(o.strip() for o in objectives.split(",")),
        seed=seed,
    )
    result = nas(
        cfg=cfg,
        space=SearchSpace.from_yaml(space) if space else DEFAULT_NAS_SPACE,
        storage=storage,
        study_name=study,
    )
    # The front is over the study's own objectives (accuracy vs params for one objective).
    objs = list(cfg.objectives) if len(cfg.objectives) > 1 else ["accuracy", "params"]
    cols = list(dict.fromkeys([*objs, "params", "flops"]))
    names = {
        "accuracy": SELECTION_ACCURACY,
        "params": "params",
        "flops": "FLOPs",
        "latency_ms": "latency ms",
    }
    rows = [
        [str(r["arch"]), *(r[c] if c in ("accuracy", "latency_ms") else int(r[c]) for c in cols)]
        for r in result.pareto
    ]
    print_table(
        f"Pareto front ({' vs '.join(objs)})",
        ["arch", *(names.get(c, c) for c in cols)],
        rows,
    )
    console.print(
        f"best: {result.best['arch']} {SELECTION_ACCURACY} {result.best['accuracy']:.4f} "
        f"params {int(result.best['params']):,}"
    )
    console.print(SELECTION_NOTE)
    if out:
        import dataclasses

        atomic.write_json(out, dataclasses.asdict(result))
    if max_params is not None and result.best["params"] > max_params:
        from slimkit.errors import AccuracyGateError

        smallest = min(int(r["params"]) for r in result.trials)
        raise AccuracyGateError(
            f"no architecture tried fits --max-params {max_params:,} (the smallest had "
            f"{smallest:,} params); the best shown is over the cap. Raise --max-params, run more "
            "--trials, or give a --space with smaller depth/width"
        )


@search_app.command("hpo")
def hpo_cmd(
    study: str = typer.Option("slimkit-hpo"),
    storage: str = typer.Option(None),
    model: str = typer.Option("lenet5"),
    dataset: str = typer.Option("digits"),
    trials: int = typer.Option(10),
    pruner: str = typer.Option("median", help="median | hyperband | none"),
    space: Path = typer.Option(None, help="YAML: {lr: {low, high, log}, batch_size: [..], ...}"),
    seed: int = typer.Option(0),
    teacher: str = typer.Option(
        None, help="trained model file or .onnx: trials distill from it (tune temperature, alpha)"
    ),
):
    """Tune training (and compression) hyperparameters with TPE and early pruning."""
    from slimkit.search import HPOConfig, hpo
    from slimkit.search.spaces import read_yaml

    kwargs: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "n_trials": trials,
        "pruner": pruner,
        "seed": seed,
        # absolute: a worker in another folder reads the study's config and loads this path
        "teacher": str(Path(teacher).resolve()) if teacher else None,
    }
    if space:
        kwargs["space"] = read_yaml(space, "hpo space")
        if isinstance(kwargs["space"], dict) and any(
            k in kwargs["space"] for k in ("sparsity", "bits")
        ):
            kwargs["objectives"] = ("accuracy", "bytes")
    s = hpo(HPOConfig(**kwargs), storage=storage, study_name=study)
    rows = [
        [t.number, str(t.params), t.state.name, t.values[0] if t.values else float("nan")]
        for t in s.trials
    ]
    print_table("trials", ["trial", "params", "state", SELECTION_ACCURACY], rows)
    console.print(SELECTION_NOTE)


@search_app.command(
    "auto",
    help=(
        "Search per-layer sparsity, bits (and ranks) to meet a size/latency budget.\n\n"
        "The study records the model file, --dataset and --out (absolute paths), so "
        "`slimkit search worker --study NAME --storage URL` can run its trials too: each worker "
        "needs the model file at the same path and writes trials to OUT/trials (a shared "
        "folder, or the same layout on each machine with the trial files copied back). Rerun "
        "this command with the same options to resume, and to pick the best trial once the "
        "workers are done."
    ),
)
def auto_cmd(
    model: str = typer.Argument(..., help="trained model file (.safetensors / .slim)"),
    out: Path = typer.Option(
        Path("runs/auto"), help="folder for best.slim, trials and auto_compress.json"
    ),
    dataset: str = typer.Option("mnist5k"),
    max_bytes: int = typer.Option(None, help="size budget of the .slim artifact"),
    max_latency_ms: float = typer.Option(
        None, help="ORT batch-1 latency budget; searches SVD ranks of Linear layers"
    ),
    max_accuracy_drop: float = typer.Option(0.5, help="percentage points"),
    rank_ratios: str = typer.Option(
        None,
        help="comma-separated SVD rank ratios in (0, 1] to search for Linear layers (1 = full "
        "rank); default 1,0.5,0.25 with --max-latency-ms, else 1 (no rank search)",
    ),
    trials: int = typer.Option(20),
    study: str = typer.Option("slimkit-auto"),
    storage: str = typer.Option(None),
    seed: int = typer.Option(0),
):
    """Search per-layer sparsity, bits (and ranks) to meet a size/latency budget."""
    from slimkit.cli.common import image_size_of, load_data, load_model_for
    from slimkit.errors import ConfigError
    from slimkit.models import ZOO
    from slimkit.search.autocompress import AutoCompressConfig, auto_compress, file_sha256

    if not 0 <= max_accuracy_drop <= 100:  # the config takes a fraction; name the option's unit
        raise ConfigError(
            f"--max-accuracy-drop is in percentage points and must be in 0..100, but got "
            f"{max_accuracy_drop:g}; e.g. --max-accuracy-drop 0.5 allows half a point"
        )
    if model in ZOO and not Path(model).exists():  # random weights: the drop meant nothing
        raise ConfigError(
            f"search auto takes a trained model file, but {model!r} is a zoo name, which builds "
            f"an untrained model; train it first (slimkit train {model} --dataset {dataset} "
            f"--out {model}.safetensors) and pass {model}.safetensors"
        )
    # Options are checked (the config validates itself) before the data and model load.
    cfg = AutoCompressConfig(
        max_bytes=max_bytes,
        max_latency_ms=max_latency_ms,
        max_accuracy_drop=max_accuracy_drop / 100,
        n_trials=trials,
        seed=seed,
        rank_ratios=_rank_ratios(rank_ratios, max_latency_ms),
    )
    batch_size = 64
    data = load_data(dataset, batch_size)
    m = load_model_for(model, dataset)
    source = None
    if model not in ZOO:  # a file: workers load it (a fresh zoo model cannot be rebuilt alike)
        path = Path(model).resolve()
        source = {
            "model": str(path),
            "sha256": file_sha256(path),
            "dataset": dataset,
            "batch_size": batch_size,
            "image_size": image_size_of(dataset),
        }
    res = auto_compress(m, data, cfg, out, storage=storage, study_name=study, source=source)
    rows = [
        [r["number"], int(r["bytes"]), r["accuracy"]]
        for r in sorted(res.pareto, key=lambda r: r["bytes"])
    ]
    print_table("Pareto front (bytes vs accuracy)", ["trial", "bytes", SELECTION_ACCURACY], rows)
    console.print(res.message)
    console.print(SELECTION_NOTE)
    console.print(f"artifact: {res.artifact}")
    if not res.met:
        from slimkit.errors import AccuracyGateError

        raise AccuracyGateError(
            f"auto-compress missed its goal ({res.message}); closest saved at {res.artifact}"
        )


def _rank_ratios(spec: str | None, max_latency_ms: float | None) -> tuple[float, ...]:
    """--rank-ratios as numbers. Not given: full rank only (the config's default), but a latency
    budget searches ranks, since without them no trial could change the latency."""
    from slimkit.errors import ConfigError
    from slimkit.search.autocompress import LATENCY_RANK_RATIOS

    if spec is None:
        return LATENCY_RANK_RATIOS if max_latency_ms is not None else (1.0,)
    try:
        return tuple(float(x) for x in spec.split(","))
    except ValueError:
        raise ConfigError(
            f"--rank-ratios must be comma-separated numbers in (0, 1] such as 1,0.5,0.25, but "
            f"got {spec!r}"
        ) from None


@search_app.command(
    "worker",
    help=(
        "Join a stored study and run trials until it reaches its trial count.\n\n"
        "An auto-compress study (made by `slimkit search auto MODEL_FILE`) needs the model file "
        "at the path the study recorded, and the worker writes trial artifacts to the study's "
        "OUT/trials: share that folder between workers, or keep the same layout on each machine "
        "and copy the trial files back before rerunning `search auto` to pick the best."
    ),
)
def worker_cmd(
    study: str = typer.Option(..., help="name of an existing study"),
    storage: str = typer.Option(..., help="SQLAlchemy URL shared by all workers"),
    trials: int = typer.Option(
        None,
        help="stop when the study has this many finished (complete, pruned or diverged) trials",
    ),
    heartbeat: int = typer.Option(
        None,
        help="seconds between heartbeats (default: the study's, 10); a trial silent for 2x is "
        "failed and retried. Every process of a study must use the same value",
    ),
):
    """Join a stored study and run trials until it reaches its trial count."""
    from slimkit.search.storage import mask_url
    from slimkit.search.worker import run_worker

    counts = run_worker(study, storage, trials, heartbeat=heartbeat)
    console.print(f"study {study!r} at {mask_url(storage)}: {counts}")


def register(app: typer.Typer) -> None:
    app.add_typer(search_app, name="search")
