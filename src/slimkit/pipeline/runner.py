"""Run a recipe stage by stage with measurement, checkpoints and resume.

Output folder layout::

    DIR/state.json                       finished stage, rows, recipe digest (atomic)
    DIR/checkpoints/stage_{i}.safetensors  the model after stage i (slimkit.io.save, atomic)
    DIR/checkpoints/stage_{i}.slim         the same model as a .slim artifact (its bytes are measured)
    DIR/model.slim, model.onnx, ...       export stages
    DIR/metrics.json, DIR/report.html     the measured table and the report

After every stage the runner checks that the model's outputs are finite (naming the first layer
that produced NaN/inf), writes the checkpoint and the measured row, then ``state.json``. With
``resume=True`` it reloads the last finished checkpoint and continues; each stage reseeds from
``recipe.seed + index`` so a resumed run gives the same bytes as an uninterrupted one. A recipe
changed only from the first unfinished stage on also resumes (the stage that failed, fixed).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit import atomic
from slimkit import io as slim_io
from slimkit.errors import AccuracyGateError, ConfigError, NumericsError, SlimkitError
from slimkit.pipeline.recipe import Recipe
from slimkit.pipeline.stages import (
    StageContext,
    StagePlan,
    check_int8_exports,
    deployable,
    example_input,
    run_stage,
)
from slimkit.training import evaluate_accuracy, seed_everything

STATE = "state.json"


@dataclasses.dataclass
class RunResult:
    out: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    report: Path | None
    passed: bool


# ---- setup ----------------------------------------------------------------------------------


def load_data(recipe: Recipe):
    from slimkit.data import load_dataset

    d = recipe.data
    if d is None:
        return None
    return load_dataset(
        d.dataset,
        batch_size=d.batch_size,
        calib_samples=d.calib_samples,
        seed=recipe.seed,
        train_samples=d.train_samples,
        test_samples=d.test_samples,
    )


def load_model(recipe: Recipe) -> nn.Module:
    from slimkit.models import build_model

    m = recipe.model
    if (m.zoo is None) == (m.path is None):
        raise ConfigError(
            f"model must give exactly one of zoo or path, but got zoo={m.zoo!r}, path={m.path!r}"
        )
    if m.path is not None:
        return slim_io.load(m.path)
    size = m.image_size  # >= 1 (schema); an explicit value is never replaced
    if size is None:
        size = 8 if recipe.data is not None and recipe.data.dataset == "digits" else 28
    seed_everything(recipe.seed)
    return build_model(str(m.zoo), image_size=size, **m.kwargs)


# Set once this process has joined torchrun's group and left it again (see cli.run).
LEFT_PROCESS_GROUP = False


@contextlib.contextmanager
def _process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size): joins torchrun's process group (gloo on CPU) when launched by
    torchrun, and leaves it when the run ends. A group left to interpreter exit can abort the
    process: gloo's threads still hold tensors when Python tears down, and rank 0 died with
    SIGABRT ('terminate called without an active exception') in one CI run (pytorch#190489).
    Ranks that finished meet at a barrier first: rank 1 tearing gloo down while rank 0 was
    still writing the report aborted the same way (3 of 28 runs; 0 of 15 with the barrier)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    joined = world > 1 and dist.is_available() and not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo")
    finished = False
    try:
        if dist.is_available() and dist.is_initialized():
            yield dist.get_rank(), dist.get_world_size()
        else:
            yield 0, 1
        finished = True
    except AccuracyGateError:  # the run completed and saved; only rank 0's gate failed
        finished = True
        raise
    finally:
        if joined and dist.is_initialized():
            if finished:  # leave together: a rank that tore gloo down while another still
                # held its pair connection aborted at exit (1 run in ~10). gc first: a DDP
                # wrapper a reference cycle still holds (its reducer holds gloo work) goes now.
                gc.collect()
                dist.barrier()
            dist.destroy_process_group()
            global LEFT_PROCESS_GROUP
            LEFT_PROCESS_GROUP = True  # the console script may skip teardown (cli.run)


def _sync(model: nn.Module) -> None:
    """Make every rank hold rank 0's weights (ranks compute the same stages; this guarantees it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
        dist.barrier()


# ---- measurement ----------------------------------------------------------------------------


@torch.no_grad()
def finite_gate(model: nn.Module, x: torch.Tensor, where: str) -> None:
    """Raise NumericsError naming the first parameter or layer (in execution order) that is not finite."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise NumericsError(
                f"{where}: parameter {name!r} holds NaN/inf; lower the learning rate or check the stage's options"
            )
    bad: list[str] = []

    def hook(name: str):
        def fn(_m, _inp, out):
            if (
                not bad
                and isinstance(out, torch.Tensor)
                and out.is_floating_point()
                and not torch.isfinite(out).all()
            ):
                bad.append(name)

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if n and not list(m.children())
    ]
    try:
        out = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    if bad or not torch.isfinite(out).all():
        layer = bad[0] if bad else "<output>"
        raise NumericsError(
            f"{where}: layer {layer!r} is the first to produce NaN/inf on a calibration batch"
        )


def layer_table(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per Linear/Conv2d layer: sparsity of the weight and its bits per stored value."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight.detach()
            q = getattr(m, "slimkit_quant", None)
            bits = (
                q["weight"].get("bits")
                if isinstance(q, dict) and isinstance(q.get("weight"), dict)
                else 32
            )
            out[name] = {
                "sparsity": float((w == 0).float().mean()),
                "bits": int(bits),
                "numel": w.numel(),
            }
    return out


def weight_histogram(model: nn.Module, bins: int = 80) -> dict[str, Any]:
    ws = [
        m.weight.detach().reshape(-1)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    w = torch.cat(ws).numpy() if ws else np.zeros(1)
    nz = w[w != 0]
    lim = float(np.abs(w).max()) or 1.0
    counts, edges = np.histogram(nz, bins=bins, range=(-lim, lim))
    return {
        "counts": counts.tolist(),
        "edges": edges.tolist(),
        "zeros": int((w == 0).sum()),
        "total": int(w.size),
    }


def measure(model: nn.Module, ctx: StageContext, ckpt: Path, slim_path: Path) -> dict[str, Any]:
    """One row of measured figures for the model after a stage (files actually written)."""
    from slimkit.export import slimformat
    from slimkit.export.onnx import export_bytes, parity
    from slimkit.metrics import count_flops, count_nonzeros, count_params, dense_fp32_bytes
    from slimkit.metrics.latency import ort_latency
    from slimkit.preconditions import int8_layers
    from slimkit.quantization.ptq import export_int8_onnx

    final = deployable(model)
    x = example_input(ctx, final)
    params = count_params(final)
    try:
        slim_bytes: int | None = slimformat.save(final, slim_path)
    except SlimkitError as exc:  # e.g. a module type the spec cannot describe: reported, not fatal
        slim_bytes = None
        slim_error = f"{type(exc).__name__}: {exc}"
    row: dict[str, Any] = {
        "bytes_safetensors": ckpt.stat().st_size,
        "bytes_slim": slim_bytes,
        "bits_per_weight": None if slim_bytes is None else 8 * slim_bytes / max(1, params),
        "params": params,
        "bytes_fp32": dense_fp32_bytes(final),  # params and float buffers (BatchNorm statistics)
        "nonzeros": count_nonzeros(final),
        "flops": count_flops(final, x),
        "accuracy": evaluate_accuracy(final, ctx.data.test) if ctx.data is not None else None,
        "latency_ms": None,
        "onnx_max_diff": None,
        "layers": layer_table(final),
    }
    if slim_bytes is None:
        row["slim_error"] = slim_error
    if ctx.recipe.measure.onnx:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "m.onnx"
                if int8_layers(final):  # the int8 graph it ships as (export), not a float one
                    export_int8_onnx(final, p, x)
                    data = p.read_bytes()
                    row["onnx_int8"] = True
                    # ORT's int8 kernels vs torch's emulation: not an export error (that is
                    # onnx_max_diff, of float graphs), so under its own key.
                    row["onnx_int8_max_diff"] = parity(final, data, x)
                else:
                    data = export_bytes(final, x)
                    p.write_bytes(data)
                    row["onnx_max_diff"] = parity(final, data, x)
                lat = ort_latency(
                    p,
                    x,
                    1,
                    threads=ctx.recipe.measure.threads,
                    runs=ctx.recipe.measure.latency_runs,
                )
            row["latency_ms"] = lat.median_ms
            row["bytes_onnx"] = len(data)
        except Exception as exc:  # a model ORT cannot run is reported, not fatal
            row["onnx_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return row


# ---- the run --------------------------------------------------------------------------------


def _read_state(out: Path, recipe: Recipe) -> dict[str, Any] | None:
    path = out / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError:  # also UnicodeDecodeError
        state = None
    if not isinstance(state, dict):
        raise ConfigError(
            f"{path} is not a run state slimkit wrote (unreadable JSON mapping); drop --resume to "
            "start the run over"
        )
    if state.get("digest") == recipe.digest():
        return state
    finished = state.get("finished")
    done = finished + 1 if isinstance(finished, int) and finished >= -1 else None
    if done is None or state.get("prefix_digest") != recipe.digest(done):
        raise ConfigError(
            f"{out} was produced by a different recipe (digest {state.get('digest')} vs "
            f"{recipe.digest()}) in its finished part: stages before stages[{done}], the model, "
            "data, seed or measure settings were changed or removed; resume only allows changes "
            f"from stages[{done}] on. Restore the recipe, or drop --resume to start over"
        )
    # Only unfinished stages changed (e.g. the stage that failed was fixed): keep the
    # finished ones, run the new rest.
    state["digest"] = recipe.digest()
    return state


# Stage kinds that change the model (export and benchmark only read it).
MODEL_CHANGING = ("train", "finetune", "prune", "quantize", "decompose", "distill")

INPUT_STAGE = -1  # reference_stage of the input model (its row's index; stage_input checkpoint)


def compress(
    recipe: Recipe | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> RunResult:
    """Run ``recipe`` into folder ``out``; raises AccuracyGateError (after saving) on a missed gate.

    ``stop_after`` (tests) ends the run after that stage index, as a crash would.
    """
    if isinstance(recipe, (str, os.PathLike)):  # a recipe file's path
        from slimkit.pipeline.recipe import load_recipe

        recipe = load_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise ConfigError(
            f"compress takes a Recipe or a recipe file's path, but got {type(recipe).__name__}"
        )
    plans: list[StagePlan] = recipe.validate_stages()
    from slimkit.pipeline.hf_stage import is_hf_recipe, run_hf_recipe

    if not (resume and (Path(out) / STATE).exists()):  # --resume checks its state.json itself
        atomic.refuse_foreign_folder(out)

    if is_hf_recipe(recipe):  # one hf_compress stage over a Hugging Face encoder
        if resume:
            log("an hf_compress run is one stage: --resume runs it again from the start")
        return run_hf_recipe(recipe, plans, out, log)
    with _process_group() as (rank, world):
        return _compress(
            recipe,
            plans,
            atomic.output_dir(out, create=False),
            rank,
            world,
            resume,
            log,
            stop_after,
        )


def _compress(
    recipe: Recipe,
    plans: list[StagePlan],
    out: Path,
    rank: int,
    world: int,
    resume: bool,
    log: Callable[[str], None],
    stop_after: int | None,
) -> RunResult:
    is_main = rank == 0
    state = _read_state(out, recipe) if resume else None
    # Load and check inputs before touching the folder: a bad model path or dataset, or a model
    # that does not take the data's images, writes nothing.
    data = load_data(recipe)
    model = load_model(recipe)
    if data is not None:
        _check_fits(recipe, model, data)
    check_int8_exports(plans, model, data)
    if is_main:
        atomic.mark_run_folder(atomic.output_dir(out))
    if is_main and state is None:
        _forget_previous_run(out, keep=recipe.model.path)
    ckdir = out / "checkpoints"
    ctx = StageContext(recipe, data, out, reference=None, is_main=is_main)

    if state is None:
        rows: list[dict[str, Any]] = []
        start = 0
        state = {
            "digest": recipe.digest(),
            "prefix_digest": recipe.digest(0),
            "finished": -1,
            "rows": rows,
            "reference_stage": None,
            "world_size": world,
            "artifacts": {},
            "notes": {},
        }
        if recipe.model.path is not None:  # a trained model file: the teacher until a train
            ctx.reference = copy.deepcopy(model).eval()  # stage makes a newer one
            state["reference_stage"] = INPUT_STAGE
        if is_main:
            x = example_input(ctx, model)
            finite_gate(model, x, "input model")
            ck = ckdir / "stage_input.safetensors"
            slim_io.save(model, ck)
            row = measure(model, ctx, ck, ckdir / "stage_input.slim")
            rows.append({"index": -1, "stage": "input", "seconds": 0.0, **row})
            state["hist_before"] = weight_histogram(model)
            atomic.write_json(out / STATE, state)
    else:
        finished = int(state["finished"])
        name = "stage_input" if finished < 0 else f"stage_{finished}"
        model = _reload(ckdir / f"{name}.safetensors")
        ref = state.get("reference_stage")
        if ref is None and recipe.model.path is not None:  # a run started before it was set
            ref = INPUT_STAGE
        if ref is not None:
            ref_name = "stage_input" if ref == INPUT_STAGE else f"stage_{ref}"
            ctx.reference = _reload(ckdir / f"{ref_name}.safetensors")
        rows = state["rows"]
        start = finished + 1
        ctx.artifacts.update(state.get("artifacts", {}))
        ctx.notes.update(state.get("notes", {}))
        if is_main:
            log(f"resuming {out} after stage {finished} ({len(plans) - start} stage(s) left)")

    for plan in plans[start:]:
        t0 = time.perf_counter()
        if is_main:
            log(
                f"[{plan.index + 1}/{len(plans)}] {plan.kind}"
                + (f" ({plan.method})" if plan.method else "")
            )
        seed_everything(recipe.seed + plan.index)
        model = run_stage(plan, model, ctx)
        _sync(model)
        x = example_input(ctx, model)
        finite_gate(model, x, f"after stages[{plan.index}].{plan.kind}")
        if plan.kind == "train":
            ctx.reference = copy.deepcopy(model).eval()
            state["reference_stage"] = plan.index
        if is_main:
            ck = ckdir / f"stage_{plan.index}.safetensors"
            slim_io.save(model, ck, meta={"stage": plan.index, "kind": plan.kind})
            row = measure(model, ctx, ck, ckdir / f"stage_{plan.index}.slim")
            rows.append(
                {
                    "index": plan.index,
                    "stage": plan.kind,
                    "method": plan.method,
                    "seconds": round(time.perf_counter() - t0, 3),
                    **row,
                }
            )
            state.update(
                finished=plan.index,
                prefix_digest=recipe.digest(plan.index + 1),
                rows=rows,
                artifacts=ctx.artifacts,
                notes=ctx.notes,
            )
            atomic.write_json(out / STATE, state)
        if stop_after is not None and plan.index >= stop_after:
            raise KeyboardInterrupt(f"stopped after stage {plan.index} (stop_after)")

    if not is_main:
        _sync(model)
        return RunResult(out, rows, {}, None, True)
    metrics = _finish(recipe, model, ctx, state, rows)
    for warning in metrics["warnings"]:
        log(f"warning: {warning}")
    from slimkit.report.html import write_report

    atomic.write_json(out / "metrics.json", metrics)  # first: a report that fails keeps it
    report = write_report(metrics, out)
    _sync(model)
    result = RunResult(out, rows, metrics, report, metrics["gate"]["passed"])
    if not result.passed:
        g = metrics["gate"]
        files = ", ".join(f"{k} {v:.2f} pp" for k, v in g["artifacts_missed"].items())
        raise AccuracyGateError(
            f"accuracy dropped {g['drop_pp']:.2f} pp (reference {g['reference_accuracy']:.4f} -> final "
            f"{g['final_accuracy']:.4f})"
            + (f" and in the shipped files by {files}" if files else "")
            + f", more than max_accuracy_drop = {g['max_drop_pp']} pp; the "
            f"artifacts and the report ({report}) are saved and marked failing"
        )
    return result


def _check_fits(recipe: Recipe, model: nn.Module, data: Any) -> None:
    """The model takes the data's images (a torch traceback from the first stage, after the
    previous run was already deleted); the fix names the recipe's keys that mismatch."""
    from slimkit.preconditions import check_fits

    m, d = recipe.model, recipe.data
    assert d is not None
    source = f"model {m.path!r}" if m.path is not None else f"zoo model {m.zoo!r}"
    try:
        check_fits(model, data, f"{source} on data.dataset {d.dataset!r}")
    except ConfigError as exc:
        fix = (
            "use a model file built for this dataset's images, or a dataset of its image size"
            if m.path is not None
            else _zoo_fit_fix(model, data)
        )
        raise ConfigError(f"{exc}; in the recipe: {fix}") from None


def _zoo_fit_fix(model: nn.Module, data: Any) -> str:
    """The recipe keys behind a zoo model that does not take the data: the model's build
    options (``slimkit_arch``, else its builder's defaults) against the data's (C, H, W) and
    classes. in_channels and num_classes come from model.kwargs, image_size from
    model.image_size (else from the dataset)."""
    import inspect

    from slimkit.models.zoo import ZOO

    arch = getattr(model, "slimkit_arch", None) or {}
    built = dict(arch.get("kwargs") or {})
    builder = ZOO.get(arch.get("zoo", ""))
    if builder is not None:
        for key, p in inspect.signature(builder).parameters.items():
            if p.default is not inspect.Parameter.empty:
                built.setdefault(key, p.default)
    shape = tuple(getattr(data, "input_shape", ()))  # one sample: (C, H, W)
    if len(shape) != 3:
        return f"check model.kwargs {arch.get('kwargs') or {}} against the dataset's inputs"
    channels, height, width = shape
    classes = getattr(data, "num_classes", None)
    fixes = []
    if built.get("in_channels") not in (None, channels):
        fixes.append(
            f"set model.kwargs.in_channels to {channels} (the dataset's images have {channels} "
            f"channel(s), the model takes {built['in_channels']})"
        )
    if built.get("image_size") not in (None, height, width):
        fixes.append(
            "drop model.image_size (it then follows the dataset) or set it to the dataset's "
            f"image size ({height})"
        )
    if isinstance(classes, int) and isinstance(built.get("num_classes"), int):
        if built["num_classes"] < classes:
            fixes.append(
                f"set model.kwargs.num_classes to {classes} (the model has "
                f"{built['num_classes']} outputs, the dataset {classes} classes)"
            )
    if not fixes:  # an option the data does not decide (e.g. a kernel larger than the image)
        fixes.append(
            f"check model.kwargs {arch.get('kwargs') or {}} against the dataset's "
            f"{channels}-channel {height}x{width} images"
        )
    return " and ".join(fixes)


# Top-level files every pipeline run writes, and the file names its export stages write (an
# HF run writes model_fp32.onnx and model.onnx).
RUN_REPORTS = ("metrics.json", "report.html")
ARTIFACT_NAMES = frozenset(
    {"model.slim", "model.onnx", "model.int8.onnx", "model.safetensors", "model_fp32.onnx"}
)


def _forget_previous_run(out: Path, keep: str | os.PathLike[str] | None = None) -> None:
    """A fresh run in a folder an earlier run wrote: delete that run's files (see
    :func:`previous_run_files`), so none of them sits beside the new run's files as if it
    were theirs."""
    for path in previous_run_files(out, keep):
        path.unlink(missing_ok=True)  # a symlink itself, never its target


def previous_run_files(out: Path, keep: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files an earlier run in ``out`` wrote: its checkpoints, its reports and state, the
    artifacts its state.json / metrics.json recorded, and the tokenizer files an HF run
    recorded (``tokenizer_files``). Only files slimkit wrote: a recorded path counts when it
    lies inside ``out`` and has a name slimkit writes (an artifact's, a tokenizer file's);
    other files stay. ``keep`` (the recipe's model.path, or its model.hf folder) and the files
    of a ``keep`` folder never count: a run may start from an earlier run's artifact or
    checkpoint in the same folder, and --resume loads it again."""
    kept = Path(keep).resolve() if keep is not None else None
    kept_folder = kept is not None and kept.is_dir()

    def ours(path: Path) -> bool:
        if kept is None:
            return True
        p = path.resolve()
        return p != kept and not (kept_folder and p.parent == kept)

    recorded: list[str] = []
    tokenizer: set[str] = set()
    for name in (STATE, "metrics.json"):
        try:
            doc = json.loads((out / name).read_text())
        except (OSError, ValueError):  # missing or unreadable: nothing recorded there
            continue
        if not isinstance(doc, dict):
            continue
        arts = doc.get("artifacts")
        if isinstance(arts, dict):
            recorded += [a["path"] for a in arts.values() if isinstance(a, dict) and "path" in a]
        if "tokenizer_files" in doc:  # an HF run's copies of its model's tokenizer files
            from slimkit.transformers.api import recorded_tokenizer_files

            tokenizer |= recorded_tokenizer_files(doc)  # bare names, at the top of the folder
    candidates = [(rel, ARTIFACT_NAMES) for rel in recorded]
    candidates += [(n, frozenset({n})) for n in sorted(tokenizer)]
    found: list[Path] = []
    root = out.resolve()
    for rel, names in candidates:
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            continue
        path = out / rel
        inside = path.parent.resolve().is_relative_to(root)  # no symlinked folder out of it
        if path.name in names and inside and (path.is_file() or path.is_symlink()):
            found.append(path)
    found += sorted((out / "checkpoints").glob("stage_*"))
    reports = [out / n for n in (*RUN_REPORTS, STATE)]
    found += [p for p in reports if p.is_file() or p.is_symlink()]
    unique = dict.fromkeys(found)  # a path recorded twice is one file
    return [p for p in unique if ours(p)]


def _reload(path: Path) -> nn.Module:
    return slim_io.load(path)  # re-attaches pruning masks' hooks itself


def _finish(
    recipe: Recipe,
    model: nn.Module,
    ctx: StageContext,
    state: dict[str, Any],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    ref_index = state.get("reference_stage")
    ref_row = next((r for r in rows if r["index"] == ref_index), rows[0])
    final_row = rows[-1]
    ref_acc, final_acc = ref_row.get("accuracy"), final_row.get("accuracy")
    drop = None if ref_acc is None or final_acc is None else 100.0 * (ref_acc - final_acc)
    limit = recipe.max_accuracy_drop
    passed = limit is None or drop is None or drop <= limit + 1e-9
    slim = ctx.artifacts.get("slim")
    warnings: list[str] = []
    slim_row = None
    if slim is not None:  # the row of the model it was written from (export changes nothing)
        slim_row = next((r for r in rows if r["index"] == slim.get("stage")), None)
    if slim is not None and ctx.data is not None:
        # The artifact itself, loaded back: its accuracy must equal the measured one.
        from slimkit.export import slimformat

        loaded = slimformat.load(ctx.out / slim["path"])
        slim["accuracy"] = evaluate_accuracy(loaded, ctx.data.test)
        measured = None if slim_row is None else slim_row.get("accuracy")
        if measured is not None and slim["accuracy"] != measured:
            warnings.append(
                f"{slim['path']} loaded back scores {slim['accuracy']:.4f}, but the model it was "
                f"written from measured {measured:.4f}: the artifact does not reproduce it"
            )
    if slim is not None and slim_row is not None:
        changed = [
            f"stages[{r['index']}].{r['stage']}"
            for r in rows
            if r["index"] > slim_row["index"] and r["stage"] in MODEL_CHANGING
        ]
        if changed:
            warnings.append(
                f"{slim['path']} was written at stages[{slim_row['index']}], and "
                f"{', '.join(changed)} changed the model after it: the compression ratio "
                "describes that earlier model, the final accuracy the later one; export at the end"
            )
    if slim is not None:
        ratio_of = f"{slim['path']}" + (
            f" (stages[{slim_row['index']}])" if slim_row is not None else ""
        )
    elif final_row.get("bytes_slim"):
        ratio_of = f"the final model's .slim (stages[{final_row['index']}], not exported)"
    else:
        ratio_of = None
    # Every shipped file whose accuracy was measured (the .slim loaded back, int8 ONNX run in
    # ORT) meets the gate too: a file that ships is what the limit is about.
    shipped_drops = {
        fmt: 100.0 * (ref_acc - a["accuracy"])
        for fmt, a in ctx.artifacts.items()
        if isinstance(a.get("accuracy"), float) and ref_acc is not None
    }
    missed = {fmt: d for fmt, d in shipped_drops.items() if limit is not None and d > limit + 1e-9}
    passed = passed and not missed
    # The first row's model as dense fp32, buffers included (the .slim file holds them too);
    # rows measured before bytes_fp32 was recorded (a resumed older run) count params only.
    dense = rows[0].get("bytes_fp32") or rows[0]["params"] * 4
    return {
        "name": recipe.name,
        "recipe": recipe.to_dict(),
        "recipe_yaml": recipe.to_yaml(),
        "world_size": state.get("world_size", 1),
        "rows": rows,
        "artifacts": ctx.artifacts,
        "notes": ctx.notes,
        "dense_fp32_bytes": dense,
        "compression_ratio": dense / slim["bytes"]
        if slim
        else (dense / final_row["bytes_slim"] if final_row.get("bytes_slim") else None),
        "compression_ratio_of": ratio_of,
        "warnings": warnings,
        "hist_before": state.get("hist_before"),
        "hist_after": weight_histogram(deployable(model)),
        "gate": {
            "passed": passed,
            "max_drop_pp": limit,
            "drop_pp": drop,
            "reference_stage": ref_index,
            "reference_accuracy": ref_acc,
            "final_accuracy": final_acc,
            "artifact_drops_pp": shipped_drops,
            "artifacts_missed": missed,
        },
    }
