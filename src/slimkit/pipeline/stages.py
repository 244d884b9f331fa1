"""One function per stage kind, plus :func:`build_stage` that validates a stage's options.

A stage's options are the config the Python API takes (``TrainConfig``, a pruning/quantization/
decomposition ``METHODS[method]`` config, ``DistillConfig``) plus a few pipeline keys:

- ``train`` / ``finetune``: TrainConfig fields. ``finetune`` keeps pruned weights at zero.
- ``prune``: ``method`` + that config's fields; ``finalize`` (default true) folds masks into zeros;
  ``sensitivity: true`` (or a list of sparsities) scans each layer first, plotted in the report.
- ``quantize``: ``method`` + fields; ``finetune_centroids`` (TrainConfig fields) fine-tunes k-means
  centroids afterwards (Deep Compression), keeping the zero centroid pinned.
- ``distill``: ``teacher: reference`` (the model after the last train stage) + DistillConfig.
- ``decompose``: ``method`` + fields; ``finetune`` (TrainConfig fields) optional.
- ``export``: ``formats`` from slim / onnx / onnx-int8 / safetensors, ``dir`` inside the output.
  An int8 model's onnx is its int8 graph, so onnx with onnx-int8 (the same graph twice) is refused.
- ``benchmark``: ``runs``, ``threads``, ``batches`` for the final latency table.

Every training config a stage builds, nested ones included (gradual pruning's ``finetune``, QAT's
and slimming's ``train``, decomposition ``recovery``), takes the recipe's ``seed`` unless the
stage gives it a ``seed`` of its own. (k-means' ``finetune_epochs`` has no seed option; its
``finetune_centroids`` stage option does.)

Train-like stages run under ``torchrun`` unchanged: with a process group of more than one
process the model is wrapped in DistributedDataParallel (gloo) and the training loader uses a
DistributedSampler (see :func:`fit`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimkit.config import SlimConfig
from slimkit.errors import ConfigError, SlimkitError
from slimkit.pruning.keep_zeros import zero_keeper
from slimkit.training import TrainConfig, train

if TYPE_CHECKING:
    from slimkit.data.datasets import DataBundle
    from slimkit.pipeline.recipe import Recipe

EXPORT_FORMATS = ("slim", "onnx", "onnx-int8", "safetensors")


@dataclasses.dataclass(frozen=True)
class StageConfig(SlimConfig):
    """Pipeline-only stage options (export, benchmark, teacher choice)."""


@dataclasses.dataclass(frozen=True)
class ExportOptions(StageConfig):
    formats: tuple[str, ...] = ("slim", "onnx")
    dir: str = "."

    def validate(self) -> None:
        bad = [f for f in self.formats if f not in EXPORT_FORMATS]
        if bad or not self.formats:
            raise ConfigError(
                f"formats must be a non-empty subset of {list(EXPORT_FORMATS)}, but got {list(self.formats)}"
            )
        p = Path(self.dir)
        if p.is_absolute() or ".." in p.parts:
            raise ConfigError(
                f"dir must be a relative path inside the output folder, but got {self.dir!r}; "
                "use e.g. dir: artifacts"
            )


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions(StageConfig):
    runs: int = 50
    threads: int = 2
    batches: tuple[int, ...] = (1, 64)

    def validate(self) -> None:
        from slimkit.config import check_int

        check_int("runs", self.runs, 1, 100_000)
        check_int("threads", self.threads, 1, 256)
        for b in self.batches:
            check_int("batches entries", b, 1, 100_000)


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A validated stage: its kind, its technique config, and pipeline options."""

    index: int
    kind: str
    config: Any  # TrainConfig / technique config / DistillConfig / ExportOptions / ...
    method: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # finalize, finetune...
    needs_data: bool = False


def _methods(kind: str) -> dict[str, type[SlimConfig]]:
    if kind == "prune":
        from slimkit.pruning.methods import METHODS as PRUNE

        return PRUNE
    if kind == "quantize":
        from slimkit.quantization.dynamic import DynamicInt8
        from slimkit.quantization.methods import METHODS as QUANT
        from slimkit.quantization.ptq import StaticInt8
        from slimkit.quantization.qat import QATInt8

        # The int8 configs under the names the recipes use, unless METHODS already lists them.
        int8: dict[str, type[SlimConfig]] = {
            "int8-static": StaticInt8,
            "int8-dynamic": DynamicInt8,
            "qat": QATInt8,
        }
        return {**int8, **QUANT}
    from slimkit.decomposition.methods import METHODS as DECOMP

    return DECOMP


def _int8_configs() -> tuple[type, ...]:
    from slimkit.quantization.dynamic import DynamicInt8
    from slimkit.quantization.ptq import StaticInt8
    from slimkit.quantization.qat import QATInt8

    return (StaticInt8, DynamicInt8, QATInt8)


def _int8_before(recipe: Recipe, index: int) -> tuple[int, str] | None:
    """(index, method) of the last quantize stage before ``index`` that makes the model int8
    (StaticInt8, DynamicInt8 or QATInt8 under any of their method names); None if none does."""
    methods = _methods("quantize")
    int8 = _int8_configs()
    found: tuple[int, str] | None = None
    for i, (kind, opts) in enumerate(recipe.stage_list()[:index]):
        method = opts.get("method") if kind == "quantize" and isinstance(opts, dict) else None
        if isinstance(method, str) and issubclass(methods.get(method, object), int8):
            found = (i, method)
    return found


def _onnx_int8_without_data(where: str, why: str) -> ConfigError:
    """The one refusal of an onnx-int8 export that would need calibration data and has none."""
    return ConfigError(
        f"{where}formats onnx-int8 makes a float model int8 with static PTQ, which calibrates "
        f"on data, but the recipe has data: null and {why}; add e.g. data: {{dataset: "
        "mnist5k}, quantize it first (quantize: {method: int8-dynamic} needs no data), or drop "
        "onnx-int8"
    )


def _int8_graph_twice(where: str, why: str, formats: tuple[str, ...]) -> ConfigError:
    """The one refusal of onnx and onnx-int8 in one export of a model that is already int8."""
    return ConfigError(
        f"{where}formats {list(formats)} would write the same int8 graph twice: {why}, so "
        "onnx already writes its int8 graph (model.onnx) and onnx-int8 would write it again "
        "(model.int8.onnx); drop onnx-int8 (or drop onnx to ship it as model.int8.onnx)"
    )


def _both_onnx(formats: tuple[str, ...]) -> bool:
    return "onnx" in formats and "onnx-int8" in formats


def check_int8_exports(plans: list[StagePlan], model: nn.Module, data: Any) -> None:
    """The export checks a loaded model file decides, made before the output folder is touched:
    a file already int8 refuses onnx with onnx-int8 in one export (the same graph twice; a
    quantize stage's int8 is refused at load, in build_stage), and with data: null a float
    file's onnx-int8 export, which cannot calibrate (was an AssertionError)."""
    from slimkit.preconditions import int8_layers

    if int8_layers(model):  # no later stage makes it float (check_stage_order)
        for plan in plans:
            if plan.kind == "export" and _both_onnx(plan.config.formats):
                raise _int8_graph_twice(
                    f"stages[{plan.index}].export: ",
                    "the model file holds int8 layers",
                    plan.config.formats,
                )
        return
    if data is not None:
        return
    int8 = _int8_configs()
    for plan in plans:
        if plan.kind == "quantize" and isinstance(plan.config, int8):
            return  # every later export sees an int8 model
        if plan.kind == "export" and "onnx-int8" in plan.config.formats:
            raise _onnx_int8_without_data(
                f"stages[{plan.index}].export: ", "the model file holds no int8 layers"
            )


def _train_config(opts: dict[str, Any], recipe: Recipe, field: str) -> TrainConfig:
    if not isinstance(opts, dict):
        raise ConfigError(f"{field} must be a mapping of TrainConfig options, but got {opts!r}")
    return TrainConfig.from_dict({"seed": recipe.seed, **opts})


def _seeded(config: Any, opts: dict[str, Any], seed: int) -> Any:
    """``config`` with the recipe's seed in each nested training config (a TrainConfig, or a
    decomposition Recovery, whose seed becomes its TrainConfig's) that the stage's options do
    not seed themselves. ``train_loop`` reseeds from ``cfg.seed``, so a nested default of 0
    overrode ``seed:`` (GradualPruning.finetune, QATInt8.train, NetworkSlimming.train,
    GatePruning.train). A config whose fine-tuning options are flat fields has a
    ``finetune_seed`` (KMeansQuantization), seeded the same way unless the stage sets it. The
    seed is ``recipe.seed``, no per-stage offset, as train stages get it."""
    from slimkit.decomposition.base import Recovery

    changes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        given = opts.get(f.name)
        explicit = f.name in opts and not (isinstance(given, dict) and "seed" not in given)
        if isinstance(value, (TrainConfig, Recovery)) and not explicit:
            changes[f.name] = dataclasses.replace(value, seed=seed)
        elif f.name == "finetune_seed" and not explicit:
            changes[f.name] = seed
    return dataclasses.replace(config, **changes) if changes else config


def _always_data() -> tuple[type, ...]:
    """Configs a stage refuses without data whatever their options: Taylor scores, gates trained
    and read on data, static-int8 / QAT calibration, and (as before, though their data-free
    options exist) mixed precision's sensitivity scan and network slimming's L1 training."""
    from slimkit.pruning.gates import GatePruning
    from slimkit.pruning.slimming import NetworkSlimming
    from slimkit.pruning.taylor import TaylorPruning
    from slimkit.quantization.mixed import MixedPrecision
    from slimkit.quantization.ptq import StaticInt8
    from slimkit.quantization.qat import QATInt8

    return (TaylorPruning, GatePruning, NetworkSlimming, StaticInt8, QATInt8, MixedPrecision)


def _needs_data(config: Any) -> bool:
    """Whether running a technique config reads the recipe's data, decided from the config (not
    from method names, which missed aliases and options): a config type that always does, a
    criterion scored on activations or gradients, or nested training of at least one epoch."""
    from slimkit.decomposition.base import Recovery, RecoveryMode
    from slimkit.pruning.criteria import NEEDS_DATA
    from slimkit.pruning.schedules import GradualPruning
    from slimkit.quantization.kmeans import KMeansQuantization

    if isinstance(config, _always_data()):
        return True
    # ChannelPruning taylor / activation / apoz, GradualPruning taylor (its own enum)
    criterion = getattr(config, "criterion", None)
    if getattr(criterion, "value", criterion) in {c.value for c in NEEDS_DATA}:
        return True
    if isinstance(config, GradualPruning) and config.total_epochs() > 0:
        return True  # recovery_epochs train even with finetune.epochs 0
    if isinstance(config, KMeansQuantization) and config.finetune_epochs > 0:
        return True  # fine-tunes the centroids inside quantize_
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, TrainConfig) and value.epochs > 0:
            return True
        # Decomposition recovery (finetune/distill) trains on the recipe's data.
        if isinstance(value, Recovery) and value.mode is not RecoveryMode.NONE and value.epochs > 0:
            return True
    return False


# What each stage kind would do to weights a quantize stage put on a grid, and the fix; the
# run refused these when it reached them (after the stages before), and train not at all.
_AFTER_QUANTIZE = {
    "train": "train before quantizing",
    "finetune": "fine-tune before quantizing (for k-means, quantize's finetune_centroids "
    "option tunes the codebook; for int8, QAT: method qat)",
    "prune": "prune first, then quantize",
    "decompose": "decompose first, then quantize the factors",
    "distill": "distill before quantizing",
}


def check_stage_order(plans: list[StagePlan]) -> None:
    """Refuse, at load, a stage that would move weights an earlier quantize stage put on a
    grid (all quantize methods record their layers), naming both stages and the fix."""
    quantized = next((p for p in plans if p.kind == "quantize"), None)
    if quantized is None:
        return
    later = next((p for p in plans[quantized.index + 1 :] if p.kind in _AFTER_QUANTIZE), None)
    if later is not None:
        raise ConfigError(
            f"stages[{later.index}].{later.kind} comes after stages[{quantized.index}].quantize "
            f"({quantized.method}) and would move the quantized weights off their grid (a "
            f"float model would be saved as quantized); {_AFTER_QUANTIZE[later.kind]}"
        )


def build_stage(index: int, kind: str, options: dict[str, Any], recipe: Recipe) -> StagePlan:
    """Validate one stage's options by building its config; errors name the stage."""
    try:
        plan = _build(index, kind, dict(options), recipe)
    except SlimkitError as exc:
        raise ConfigError(f"stages[{index}].{kind}: {exc}") from None
    if plan.needs_data and recipe.data is None:
        raise ConfigError(
            f"stages[{index}].{kind} needs training or calibration data, but the recipe has "
            "data: null; add e.g. data: {dataset: mnist5k}"
        )
    return plan


def _build(index: int, kind: str, opts: dict[str, Any], recipe: Recipe) -> StagePlan:
    if kind in ("train", "finetune"):
        return StagePlan(index, kind, _train_config(opts, recipe, kind), needs_data=True)
    if kind in ("prune", "quantize", "decompose"):
        methods = _methods(kind)
        method = opts.pop("method", None)
        if method not in methods:
            raise ConfigError(f"method must be one of {sorted(methods)}, but got {method!r}")
        extra: dict[str, Any] = {}
        needs = False
        if kind == "prune":
            finalize = opts.pop("finalize", True)
            if not isinstance(finalize, bool):  # bool("false") was True
                raise ConfigError(
                    f"finalize must be true or false, but got {finalize!r}; write it unquoted "
                    "(finalize: false keeps the pruning masks)"
                )
            extra["finalize"] = finalize
            scan = opts.pop("sensitivity", None)
            if scan is not None and scan is not False:
                levels = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98] if scan is True else scan
                if not isinstance(levels, list) or not all(
                    isinstance(v, (int, float)) and 0 <= v < 1 for v in levels
                ):
                    raise ConfigError(
                        f"sensitivity must be true or a list of sparsities in [0, 1), but got {scan!r}"
                    )
                extra["sensitivity"] = [float(v) for v in levels]
                needs = True
        if kind == "quantize" and "finetune_centroids" in opts:
            extra["finetune_centroids"] = _train_config(
                opts.pop("finetune_centroids"), recipe, "finetune_centroids"
            )
            needs = True
        if kind == "decompose" and "finetune" in opts:
            extra["finetune"] = _train_config(opts.pop("finetune"), recipe, "finetune")
            needs = True
        config = _seeded(methods[method].from_dict(opts), opts, recipe.seed)
        needs = needs or _needs_data(config)
        return StagePlan(index, kind, config, method, extra, needs_data=needs)
    if kind == "distill":
        from slimkit.distillation.trainer import DistillConfig

        teacher = opts.pop("teacher", "reference")
        if teacher != "reference":
            raise ConfigError(
                f"teacher must be 'reference' (the model after the last train stage), but got {teacher!r}"
            )
        train = opts.pop("train", {})
        if not isinstance(train, dict):  # `train:` left empty was a TypeError from **None
            raise ConfigError(f"train must be a mapping of TrainConfig options, but got {train!r}")
        kinds = [k for k, _ in recipe.stage_list()[:index]]
        if "train" not in kinds and recipe.model.path is None:  # was refused at run time
            raise ConfigError(
                "needs a trained teacher: add a train stage before it (its model becomes the "
                "teacher), or start from a trained model file (model: {path: trained.safetensors})"
            )
        config = DistillConfig.from_dict({**opts, "train": {"seed": recipe.seed, **train}})
        return StagePlan(index, kind, config, options={"teacher": teacher}, needs_data=True)
    if kind == "export":
        export = ExportOptions.from_dict(opts)
        # onnx-int8 of a float model quantizes a copy with static PTQ, calibrated on data. A
        # model file may already be int8: checked when it is loaded (check_int8_exports).
        int8 = _int8_before(recipe, index)
        if int8 is not None and _both_onnx(export.formats):
            raise _int8_graph_twice(
                "",
                f"the model is int8 after stages[{int8[0]}].quantize ({int8[1]})",
                export.formats,
            )
        needs = "onnx-int8" in export.formats and recipe.model.path is None and int8 is None
        if needs and recipe.data is None:
            raise _onnx_int8_without_data("", "no quantize stage before makes it int8")
        return StagePlan(index, kind, export, needs_data=needs)
    if kind == "benchmark":
        return StagePlan(index, kind, BenchmarkOptions.from_dict(opts))
    if kind == "hf_compress":
        from slimkit.pipeline.hf_stage import build_hf_stage

        return StagePlan(index, kind, build_hf_stage(index, opts, recipe), needs_data=True)
    raise ConfigError(f"unknown stage kind {kind!r}")  # pragma: no cover - schema checked it


# ---- running ------------------------------------------------------------------------------


@dataclasses.dataclass
class StageContext:
    recipe: Recipe
    data: DataBundle | None
    out: Path
    reference: nn.Module | None  # the model after the last train stage (teacher, accuracy ref)
    is_main: bool = True
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    description: str = "train",
) -> nn.Module:
    """``training.train``, data-parallel (DDP + DistributedSampler) when run under torchrun."""
    rank, world = _world()
    if world == 1:
        return train(
            model, data, cfg, loss_fn=loss_fn, after_step=after_step, description=description
        )
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    sampler: DistributedSampler = DistributedSampler(
        data.train.dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    loader = DataLoader(data.train.dataset, batch_size=data.train.batch_size, sampler=sampler)
    shard = dataclasses.replace(data, train=loader)
    ddp = DistributedDataParallel(model)
    inner = model

    def step_hook(_m: nn.Module) -> None:
        if after_step is not None:
            after_step(inner)

    def epoch_hook(epoch: int, _m: nn.Module) -> None:
        sampler.set_epoch(epoch + 1)

    train(
        ddp,
        shard,
        cfg,
        loss_fn=loss_fn,
        after_step=step_hook,
        on_epoch_end=epoch_hook,
        description=f"{description} [rank {rank}/{world}]",
    )
    return model.eval()


def _is_weight_quantized(model: nn.Module) -> bool:
    from slimkit.preconditions import quantized_layers

    return bool(quantized_layers(model))


def _need_data(ctx: StageContext) -> DataBundle:
    assert ctx.data is not None, "validated at recipe load"
    return ctx.data


def run_train(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    if plan.kind == "finetune" and _is_weight_quantized(model):
        raise ConfigError(
            f"stages[{plan.index}].finetune would move quantized weights off their grid; use "
            "quantize's finetune_centroids option, or fine-tune before quantizing"
        )
    keeper = zero_keeper(model) if plan.kind == "finetune" else None
    return fit(
        model,
        _need_data(ctx),
        plan.config,
        after_step=keeper,
        description=f"stage {plan.index}: {plan.kind}",
    )


def run_prune(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    from slimkit.pruning import finalize_, prune_

    levels = plan.options.get("sensitivity")
    if levels and ctx.is_main:
        # Per-layer sensitivity scan before pruning (each layer pruned alone), for the report.
        from slimkit.pruning import sensitivity_scan

        table = sensitivity_scan(model, _need_data(ctx), levels)
        ctx.notes[f"sensitivity_{plan.index}"] = {
            "baseline": table.baseline,
            "curves": {
                n: [[s, a] for s, a in zip(table.sparsities, accs, strict=True)]
                for n, accs in table.accuracy.items()
            },
        }
    model = prune_(model, plan.config, data=ctx.data)
    if plan.options.get("finalize", True):
        finalize_(model)
    history = getattr(model, "slimkit_pruning", None)
    if history:
        ctx.notes[f"prune_{plan.index}"] = history
    return model.eval()


def run_quantize(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    from slimkit.quantization import quantize_

    model = quantize_(model, plan.config, data=ctx.data)
    ft = plan.options.get("finetune_centroids")
    if ft is not None:
        from slimkit.quantization.kmeans import finetune_centroids

        finetune_centroids(model, _need_data(ctx), ft)
    return model.eval()


def run_decompose(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    from slimkit.decomposition import decompose_

    model = decompose_(model, plan.config, data=ctx.data)
    ft = plan.options.get("finetune")
    if ft is not None:
        fit(model, _need_data(ctx), ft, description=f"stage {plan.index}: decompose fine-tune")
    return model.eval()


def run_distill(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    from slimkit.distillation.trainer import distill

    if ctx.reference is None:  # checked at load (a train stage or model.path comes first)
        raise ConfigError(
            f"stages[{plan.index}].distill needs a reference model: add a train stage before it"
        )
    teacher = copy.deepcopy(ctx.reference).eval()
    distill(model, teacher, _need_data(ctx), plan.config)  # keeps pruned zeros itself
    return model.eval()


def example_input(ctx: StageContext, model: nn.Module) -> torch.Tensor:
    if ctx.data is not None:
        return ctx.data.example_input(1)
    arch = getattr(model, "slimkit_arch", {})
    size = arch.get("kwargs", {}).get("image_size", 28)
    return torch.zeros(1, 1, size, size)


def deployable(model: nn.Module) -> nn.Module:
    """A copy with pruning masks folded into zeros (what gets stored)."""
    out = copy.deepcopy(model)
    if any(hasattr(m, "weight_mask") for m in out.modules()):
        from slimkit.pruning import finalize_

        finalize_(out)
    return out.eval()


def run_export(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    from slimkit import io as slim_io
    from slimkit.export import slimformat
    from slimkit.export.onnx import parity, to_onnx
    from slimkit.preconditions import int8_layers
    from slimkit.quantization.ptq import export_int8_onnx

    opts: ExportOptions = plan.config
    folder = (ctx.out / opts.dir).resolve()
    if not folder.is_relative_to(ctx.out.resolve()):
        raise ConfigError(f"export dir {opts.dir!r} resolves outside the output folder {ctx.out}")
    if not ctx.is_main:
        return model
    final = deployable(model)
    x = example_input(ctx, final)
    files: dict[str, dict[str, Any]] = {}
    for fmt in opts.formats:
        if fmt == "slim":
            path = folder / "model.slim"
            n = slimformat.save(final, path)
            files[fmt] = {
                "path": str(path.relative_to(ctx.out.resolve())),
                "bytes": n,
                "stats": slimformat.stats(path),
            }
        elif fmt == "safetensors":
            path = folder / "model.safetensors"
            files[fmt] = {
                "path": str(path.relative_to(ctx.out.resolve())),
                "bytes": slim_io.save(final, path),
            }
        elif fmt == "onnx" and int8_layers(final):
            # The int8 graph, as `slimkit export` writes it: a float export of an int8 model
            # shipped (and timed) fp32 weights and float matmuls.
            path = folder / "model.onnx"
            q = export_int8_onnx(final, path, x)
            files[fmt] = {
                "path": str(path.relative_to(ctx.out.resolve())),
                "bytes": q.bytes,
                "int8": True,
                # ORT's int8 kernels vs torch's emulation (not an export error: the accuracy
                # of the file, measured below as for onnx-int8, is what the gate checks)
                "int8_max_abs_diff": parity(final, path, x),
            }
            if ctx.data is not None:
                files[fmt]["accuracy"] = onnx_accuracy(path, ctx.data.test)
        elif fmt == "onnx":
            path = folder / "model.onnx"
            res = to_onnx(final, path, x, atol=1e-3)
            files[fmt] = {
                "path": str(path.relative_to(ctx.out.resolve())),
                "bytes": res.bytes,
                "max_abs_diff": res.max_abs_diff,
            }
        elif fmt == "onnx-int8":
            files[fmt] = _export_int8(final, folder / "model.int8.onnx", x, ctx)
    for info in files.values():
        info["stage"] = plan.index  # later stages may change the model this file holds
    ctx.artifacts.update(files)
    return model


def _export_int8(
    model: nn.Module, path: Path, x: torch.Tensor, ctx: StageContext
) -> dict[str, Any]:
    """Int8 QDQ ONNX: the model as is when already int8-quantized, else static PTQ of a copy."""
    from slimkit.preconditions import int8_layers
    from slimkit.quantization.ptq import StaticInt8, export_int8_onnx

    m = model
    if not int8_layers(model):  # StaticInt8/QATInt8 layers, or DynamicInt8's float ones
        from slimkit.quantization import quantize_

        if ctx.data is None:  # refused at load (build_stage, check_int8_exports)
            raise _onnx_int8_without_data("", "the model is float")
        m = copy.deepcopy(model)
        calib = min(256, len(ctx.data.calib.dataset))  # type: ignore[arg-type]
        quantize_(m, StaticInt8(calib_samples=calib), data=ctx.data)
    res = export_int8_onnx(m, path, x)
    out = {"path": str(path.relative_to(ctx.out.resolve())), "bytes": path.stat().st_size}
    if ctx.data is not None:
        out["accuracy"] = onnx_accuracy(path, ctx.data.test)
    out["export"] = {
        k: v for k, v in dataclasses.asdict(res).items() if isinstance(v, (int, float, str))
    }
    return out


def onnx_accuracy(path: Path, loader) -> float:
    """Top-1 accuracy of an ONNX file in ONNX Runtime (measured on the file written)."""
    import numpy as np

    from slimkit.export.ort import make_session

    sess = make_session(str(path), threads=2)
    name = sess.get_inputs()[0].name
    hits = total = 0
    for x, y in loader:
        logits = sess.run(None, {name: x.numpy().astype(np.float32)})[0]
        hits += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return hits / max(1, total)


def run_benchmark(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    import tempfile

    from slimkit.export.onnx import to_onnx
    from slimkit.metrics.latency import ort_latency, torch_latency
    from slimkit.preconditions import int8_layers
    from slimkit.quantization.ptq import export_int8_onnx

    if not ctx.is_main:
        return model
    opts: BenchmarkOptions = plan.config
    final = deployable(model)
    x = example_input(ctx, final)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        if int8_layers(final):  # time the int8 graph this model ships as, not a float one
            export_int8_onnx(final, onnx_path, x)
            targets = {"onnx (int8)": onnx_path}
        else:
            to_onnx(final, onnx_path, x, atol=1e-3)
            targets = {"onnx": onnx_path}
        int8 = ctx.artifacts.get("onnx-int8")
        if int8:
            targets["onnx-int8"] = ctx.out / int8["path"]
        for b in opts.batches:
            rows.append(
                {
                    "artifact": "torch",
                    **torch_latency(final, x, b, threads=opts.threads, runs=opts.runs).to_dict(),
                }
            )
            for label, p in targets.items():
                rows.append(
                    {
                        "artifact": label,
                        **ort_latency(p, x, b, threads=opts.threads, runs=opts.runs).to_dict(),
                    }
                )
    ctx.notes["benchmark"] = rows
    return model


RUNNERS: dict[str, Callable[[StagePlan, nn.Module, StageContext], nn.Module]] = {
    "train": run_train,
    "finetune": run_train,
    "prune": run_prune,
    "quantize": run_quantize,
    "decompose": run_decompose,
    "distill": run_distill,
    "export": run_export,
    "benchmark": run_benchmark,
}


def run_stage(plan: StagePlan, model: nn.Module, ctx: StageContext) -> nn.Module:
    return RUNNERS[plan.kind](plan, model, ctx)
