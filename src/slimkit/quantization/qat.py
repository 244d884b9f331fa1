"""Quantization-aware training: train the int8 fake-quant model, export the same int8 graph.

``sk.quantize_(model, QATInt8(train=TrainConfig(epochs=2, lr=5e-4)), data=bundle)``:

1. the static-PTQ preparation (BatchNorm folded into convs, ReLU fused, fake-quant layers) and a
   min-max calibration on ``calib_samples`` samples give the starting grids;
2. training runs through the fake-quant forward: weights, biases, inputs and outputs are rounded
   in the forward pass and the gradient goes straight through (STE); activation ranges follow
   an exponential moving min/max, weight scales follow the weights;
3. after ``freeze_observers_epoch`` epochs the activation grids are frozen, so the last epochs
   fine-tune the weights against the grids that will be deployed;
4. weights/biases are snapped onto their grids; ``ptq.export_int8_onnx`` writes the int8 file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from slimkit.config import SlimConfig, check_int, parse_enum
from slimkit.errors import ConfigError
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.fakequant import QUANT_TYPES, set_state
from slimkit.quantization.observers import ObserverKind
from slimkit.quantization.ptq import prepare_and_calibrate, sync_shared
from slimkit.training import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class QATInt8(SlimConfig):
    """Int8 QAT; ``train`` holds the fine-tuning loop's options (a TrainConfig or its dict)."""

    train: TrainConfig | dict = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=2, lr=5e-4)
    )
    freeze_observers_epoch: int = (
        1  # activation grids are frozen from this epoch on (0 = never move)
    )
    observer: ObserverKind | str = ObserverKind.MINMAX  # initial calibration
    calib_samples: int = 256
    per_channel: bool = True
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainConfig.from_dict(self.train))
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(
                f"train must be a TrainConfig or a dict of its options, got {self.train!r}"
            )
        object.__setattr__(self, "observer", parse_enum(ObserverKind, self.observer, "observer"))
        check_int("freeze_observers_epoch", self.freeze_observers_epoch, 0, 10_000)
        check_int("calib_samples", self.calib_samples, 1, 1_000_000)
        if self.train.epochs < 1:
            raise ConfigError(
                "QATInt8 trains with fake quantization, so train.epochs must be >= 1, but got 0; "
                "for int8 without training use StaticInt8"
            )
        if self.freeze_observers_epoch > self.train.epochs:
            raise ConfigError(
                f"freeze_observers_epoch must be <= train.epochs ({self.train.epochs}), but got "
                f"{self.freeze_observers_epoch}; observers must be frozen before training ends"
            )


def freeze_observers(model: nn.Module, frozen: bool = True) -> None:
    """Stop (or resume) the moving-average updates of every activation grid."""
    for m in model.modules():
        if isinstance(m, QUANT_TYPES):
            m.slimkit_quant["int8"]["frozen"] = frozen


def finish_qat(model: nn.Module) -> nn.Module:
    """Freeze everything, snap weights/biases onto their grids, switch to inference state."""
    freeze_observers(model)
    sync_shared(model)
    for m in model.modules():
        if isinstance(m, QUANT_TYPES):
            m.refresh_weight_qparams()
            m.snap_to_grid()
    set_state(model, "quant")
    return model.eval()


@QUANTIZERS.register(QATInt8)
def _qat_int8(model: nn.Module, config: QATInt8, *, data: Any = None, **_: Any) -> nn.Module:
    if data is None or not hasattr(data, "train"):
        raise ConfigError("QATInt8 needs data=<DataBundle> with train and calib loaders")
    from slimkit.pruning.keep_zeros import chain, mask_keeper, zero_masks

    # Pruning zeros are read from the float model: calibration snaps weights onto the int8
    # grid, and small weights it rounded to 0 (a whole channel with per_channel=False) were
    # then kept at 0 for good as if pruned. Folding BN keeps a zero weight zero.
    masks = zero_masks(model)
    prepare_and_calibrate(model, config, data)
    set_state(model, "qat")
    freeze_observers(model, config.freeze_observers_epoch == 0)

    def on_epoch_end(epoch: int, m: nn.Module) -> None:
        if epoch + 1 >= config.freeze_observers_epoch:
            freeze_observers(m)

    assert isinstance(config.train, TrainConfig)
    train(
        model,
        data,
        config.train,
        on_epoch_end=on_epoch_end,
        # A pruned model stays pruned: the straight-through gradient reaches its zero
        # weights (0 is on the int8 grid) and training regrew them, densely.
        after_step=chain(mask_keeper(masks, model), sync_shared),
        description="qat int8",
    )
    return finish_qat(model)
