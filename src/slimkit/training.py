"""Seeded, deterministic CPU training and evaluation loops.

``train(model, data, TrainConfig(...))`` runs AdamW or SGD with a cosine LR schedule, optional
bf16 autocast, a rich progress bar, and optional hooks for compression techniques:
``loss_fn(model, x, y, logits) -> loss`` replaces cross-entropy (distillation, L1 on BN gammas),
``after_step(model)`` runs after every optimizer step (re-apply pruning masks).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config import SlimConfig, check_int, check_range
from slimkit.data.datasets import DataBundle, check_label_shape
from slimkit.errors import ConfigError, NumericsError
from slimkit.progress import progress_bar

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclasses.dataclass(frozen=True)
class TrainConfig(SlimConfig):
    epochs: int = 5
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" | "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD's momentum; AdamW's beta1 (its first-moment decay)
    schedule: str = "cosine"  # "cosine" | "constant"
    bf16: bool = False  # autocast matmuls/convs to bfloat16 (mixed-precision training)
    seed: int = 0
    device: str = "cpu"
    max_batches: int | None = None  # cut each epoch short (tests, quick runs)

    def validate(self) -> None:
        check_int("epochs", self.epochs, 0, 10_000)
        check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(
                f"optimizer must be one of ['adamw', 'sgd'], but got {self.optimizer!r}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(
                f"schedule must be one of ['cosine', 'constant'], but got {self.schedule!r}"
            )
        if self.max_batches is not None:
            check_int("max_batches", self.max_batches, 1, 10**9)
        check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_int("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.bf16, bool):
            raise ConfigError(f"bf16 must be true or false, but got {self.bf16!r}")
        try:
            kind = torch.device(self.device).type if isinstance(self.device, str) else None
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
            raise ConfigError(
                f"device must be 'cpu', or 'cuda' on a machine with a CUDA GPU, but got "
                f"{self.device!r}" + (" and this machine has none" if kind == "cuda" else "")
            )


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, extra_params: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    # extra_params: trainable tensors outside the model (e.g. distillation adapters).
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for p in extra_params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    # AdamW's momentum is its beta1 (torch's default 0.9 = our default), as in fastai/Keras;
    # beta2 stays torch's 0.999.
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
    )


def train(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    description: str = "train",
    extra_params: Iterable[nn.Parameter] = (),
) -> nn.Module:
    """Train ``model`` in place on ``data.train``; returns the model (in eval mode).

    ``extra_params`` are optimized together with the model (e.g. the adapters a ``loss_fn`` owns).
    """
    from slimkit.preconditions import check_fits, check_model

    check_model(model, description)
    # A DistributedDataParallel wrapper's forward runs collectives (buffer broadcast): probe
    # the module inside it, which needs no other rank.
    check_fits(getattr(model, "module", model), data, description)
    return train_loop(
        model,
        data,
        cfg,
        loss_fn=loss_fn,
        after_step=after_step,
        on_epoch_end=on_epoch_end,
        description=description,
        extra_params=extra_params,
    )


def train_loop(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    description: str = "train",
    extra_params: Iterable[nn.Parameter] = (),
) -> nn.Module:
    """:func:`train` without its model checks and forward probe, for a caller that ran them on
    this model and data already (``distill`` probes student and teacher on the CPU, before it
    moves them to ``cfg.device``: a second probe here was the same pass again, on a model that
    may no longer be on the data's device)."""
    cfg = cfg or TrainConfig()
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    if cfg.epochs == 0:
        return model.eval()
    try:
        batches = len(data.train)
    except TypeError:  # a stream without a length (IterableDataset): max_batches bounds it
        if cfg.max_batches is None:
            raise ConfigError(
                f"{description}: the training loader has no length (an IterableDataset?), so "
                "an epoch has no end and the learning-rate schedule no total; set max_batches "
                "(the batches one epoch reads), or give its dataset a __len__"
            ) from None
        batches = cfg.max_batches
    steps_per_epoch = batches if cfg.max_batches is None else min(cfg.max_batches, batches)
    if steps_per_epoch == 0:  # ran no step and returned the untrained model, silently
        raise ConfigError(
            f"{description}: the training loader yields no batch (len 0), so {cfg.epochs} "
            "epoch(s) would not change the model; pass a non-empty loader (with drop_last=True "
            "it needs at least batch_size samples), or epochs=0 to skip training"
        )
    opt = make_optimizer(model, cfg, list(extra_params))
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        (lambda s: 0.5 * (1 + np.cos(np.pi * s / total)))
        if cfg.schedule == "cosine"
        else (lambda s: 1.0),
    )
    # The loader's shuffle generator is re-seeded so a run is the same whatever ran before it.
    gen = getattr(data.train, "generator", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(cfg.seed)
    with progress_bar(description, total) as advance:
        for epoch in range(cfg.epochs):
            model.train()
            for i, (x, y) in enumerate(data.train):
                if i >= steps_per_epoch:
                    break
                # Read here, not ahead: a stream may be one-shot. An (N, 1) column met the (N,)
                # predictions by broadcasting (accuracy ~0.1); from_tensors/from_loaders check
                # this, a hand-built DataBundle did not.
                check_label_shape(y, f"{description}: the training loader's labels")
                x, y = x.to(device), y.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    logits = model(x)
                    loss = loss_fn(model, x, y, logits) if loss_fn else F.cross_entropy(logits, y)
                if not torch.isfinite(loss.detach()).all():
                    raise NumericsError(
                        f"{description}: the loss became {float(loss.detach()):g} at epoch {epoch + 1}, "
                        f"step {i + 1}; the model would train to NaN. Lower the learning rate "
                        f"(lr={cfg.lr:g}), or check the data and any teacher for NaN/inf"
                    )
                opt.zero_grad(set_to_none=True)
                loss.float().backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step(model)
                advance(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
    _check_finite_after(model, cfg, description)
    return model.eval()


def _check_finite_after(model: nn.Module, cfg: TrainConfig, description: str) -> None:
    """The loss is checked before each backward pass, so a last step whose loss was finite but
    whose gradients overflowed left NaN/inf weights that were returned without a word."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p.detach()).all():
            layer, _, leaf = name.rpartition(".")
            raise NumericsError(
                f"{description}: training left NaN/inf in layer {layer or '(root)'!r}'s {leaf} "
                f"(the loss was finite, but the gradients of the last step(s) overflowed); "
                f"lower the learning rate (lr={cfg.lr:g}), or check the data, any teacher and a "
                "custom loss for values whose gradient is not finite"
            )


@torch.no_grad()
def predict(model: nn.Module, loader, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits, labels) over a loader, model in eval mode."""
    model.eval().to(device)
    outs, labels = [], []
    for x, y in loader:
        outs.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def evaluate_accuracy(model: nn.Module, loader, device: str = "cpu") -> float:
    """Top-1 accuracy in [0, 1] over a loader."""
    logits, labels = predict(model, loader, device)
    if len(labels) == 0:
        raise ConfigError("cannot evaluate accuracy on an empty loader (0 samples)")
    if labels.dim() != 1:  # (N, 1) against (N,) broadcast to an N x N table: accuracy ~0.1
        fix = "y.squeeze(1)" if labels.dim() == 2 and labels.shape[1] == 1 else "y.argmax(1)"
        raise ConfigError(
            f"accuracy needs labels of shape (N,), one class index per sample, but the loader "
            f"gives shape {tuple(labels.shape)}; pass class indices ({fix})"
        )
    if logits.dim() != 2 or len(logits) != len(labels):
        raise ConfigError(
            f"accuracy needs the model's outputs as (N, classes) scores for the N={len(labels)} "
            f"labels, but got shape {tuple(logits.shape)}"
        )
    # correct / total in Python (double): a float32 mean made 0.97 - 0.965 exceed 0.005, so a
    # drop exactly at a limit failed it
    return int((logits.argmax(1) == labels).sum()) / len(labels)
