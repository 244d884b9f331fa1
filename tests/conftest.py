"""Test-wide settings: one torch thread per worker (pytest-xdist runs two), quiet progress."""

import os

os.environ.setdefault("SLIMKIT_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def digits():
    """sklearn digits as a DataBundle: (B, 1, 8, 8) images, 10 classes. Fast."""
    from slimkit.data import load_dataset

    return load_dataset("digits", batch_size=64, calib_samples=128)
