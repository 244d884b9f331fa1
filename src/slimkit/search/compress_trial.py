"""One auto-compress trial: per layer group, optional SVD rank -> gradual magnitude pruning with
fine-tuning between steps (masks kept) -> k-means weight sharing -> centroid fine-tuning.

A trial's choice is a flat dict keyed by group (see :func:`slimkit.search.budget.layer_groups`):
``sparsity_<group>`` (final sparsity of the group's weights, pruned over the group as a whole),
``bits_<group>`` (k-means bits) and, for Linear layers when ranks are searched, ``rank_<group>``.

Pruning follows the AGP cubic (:func:`slimkit.pruning.schedules.schedule_values`) for every group
at once: each of ``prune_steps`` steps raises every group to its next target and fine-tunes the
whole model ``finetune_epochs`` epochs. ``train=False`` prunes once to the final sparsities and
skips every fine-tune: the same masks and bit widths, so the artifact it gives measures the byte
cost of a choice in about a second (fine-tuning only shifts the entropy coding a little).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from slimkit.errors import ConfigError

if TYPE_CHECKING:
    from slimkit.search.autocompress import AutoCompressConfig

# Called after each pruning step's fine-tune with (step, model); returns True to stop
# fine-tuning there (the trial is hopeless) and go straight to quantization.
StepCheck = Callable[[int, nn.Module], bool]


def compress_trial(
    model: nn.Module,
    data: Any,
    groups: dict[str, list[str]],
    choice: dict[str, Any],
    cfg: AutoCompressConfig | None,
    *,
    train: bool = True,
    check: StepCheck | None = None,
) -> tuple[nn.Module, int | None]:
    """Compress a copy of ``model`` by ``choice``; returns it (eval mode) and the pruning step at
    which ``check`` stopped fine-tuning (None: it ran to the end)."""
    import slimkit as sk
    from slimkit.decomposition.methods import METHODS as DECOMPOSE
    from slimkit.pruning import finalize_, reapply_masks
    from slimkit.pruning.magnitude import MagnitudePruning
    from slimkit.pruning.masks import Scope
    from slimkit.pruning.schedules import schedule_values
    from slimkit.quantization.kmeans import KMeansQuantization, finetune_centroids
    from slimkit.training import TrainConfig
    from slimkit.training import train as train_model

    if train and cfg is None:
        raise ConfigError("compress_trial(train=True) needs the AutoCompressConfig, but got None")
    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    factored: set[str] = set()
    for g, names in groups.items():
        ratio = choice.get(f"rank_{g}", 1.0)
        linears = [n for n in names if isinstance(modules[n], nn.Linear)]
        if ratio < 1.0 and linears:
            spec = {"rank": {"ratio": ratio}, "targets": linears}
            sk.decompose_(m, DECOMPOSE["svd"].from_dict(spec))
            factored.update(linears)
    # A factored Linear became Sequential(Linear(in, r), Linear(r, out)): prune and quantize
    # both factors (names "<layer>.0" and "<layer>.1").
    targets = {
        g: [f"re:^{n}\\.[01]$" if n in factored else n for n in names]
        for g, names in groups.items()
    }
    steps = cfg.prune_steps if train and cfg is not None else 1
    schedule = {
        g: schedule_values("agp", float(choice[f"sparsity_{g}"]), steps)
        for g in groups
        if choice[f"sparsity_{g}"] > 0
    }
    stopped: int | None = None
    for step in range(steps):
        for g, values in schedule.items():
            # Scope "global" within the group: its layers share the group's sparsity budget.
            sk.prune_(
                m,
                MagnitudePruning(
                    sparsity=values[step], scope=Scope.GLOBAL, targets=tuple(targets[g])
                ),
            )
        if not train or cfg is None or not cfg.finetune_epochs:
            continue
        tc = TrainConfig(
            epochs=cfg.finetune_epochs, lr=cfg.lr, seed=cfg.seed + step, max_batches=cfg.max_batches
        )
        train_model(m, data, tc, after_step=reapply_masks, description=f"prune step {step + 1}")
        if check is not None and check(step + 1, m.eval()):
            stopped = step + 1
            # Still reach the chosen sparsities (no more fine-tuning), so the artifact measures
            # the choice's real size.
            for g, values in schedule.items():
                sk.prune_(
                    m,
                    MagnitudePruning(
                        sparsity=values[-1], scope=Scope.GLOBAL, targets=tuple(targets[g])
                    ),
                )
            break
    finalize_(m)
    for g in groups:
        bits = int(choice[f"bits_{g}"])
        sk.quantize_(m, KMeansQuantization(bits=bits, targets=tuple(targets[g])))
    if train and cfg is not None and cfg.centroid_epochs and stopped is None:
        tc = TrainConfig(
            epochs=cfg.centroid_epochs,
            lr=cfg.centroid_lr,
            seed=cfg.seed,
            max_batches=cfg.max_batches,
        )
        finetune_centroids(m, data, tc)
    return m.eval(), stopped
