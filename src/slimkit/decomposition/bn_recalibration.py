"""Re-estimate BatchNorm running statistics after layers are replaced (AdaBN-style, Li et al. 2016).

A factorised conv approximates the original output, so the BatchNorm after it no longer sees the
distribution its running mean/var were measured on. Two things go wrong without this step:

- with no recovery, eval-mode BN normalises by stale statistics (ResNet on mnist5k, CP ratio
  0.12: 9 % test accuracy, 51 % once the statistics are re-measured);
- after a short recovery, the exponential moving average (momentum 0.1) lags the weights, which
  is fatal for channels of tiny variance: the same CP model trained 63 batches scored 11.7 % in
  eval mode but 89.9 % with batch statistics, and 89.8 % after this step.

The step runs the model in train mode without gradients over calibration batches with
``momentum=None`` (a cumulative average over all batches seen), then restores each layer's
momentum and the model's mode. Only BN buffers change; no parameter is touched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that keep running statistics (the ones eval mode depends on)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> int:
    """Replace every BN layer's running mean/var by their average over ``batches``.

    ``batches`` yields (inputs, labels) like a DataLoader. Returns the number of batches used
    (0 when the model has no BatchNorm or the loader is empty, leaving the model unchanged).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    # (momentum, {"running_mean": .., "running_var": .., "num_batches_tracked": ..}) per layer
    saved = {
        m: (m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in layers
    }
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    used = 0
    try:
        model.train()
        for x, _ in batches:
            model(x)
            used += 1
    finally:
        for m, (momentum, buffers) in saved.items():
            m.momentum = momentum
            if used == 0:  # nothing seen: keep the old statistics rather than the reset ones
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(buffers[k])
        model.train(was_training)
    return used
