"""Shared fixtures for distillation tests: a briefly trained LeNet-5 teacher on digits."""

import pytest
import torch


@pytest.fixture(scope="module")
def digits_data():
    from slimkit.data import load_dataset

    return load_dataset("digits", batch_size=64, calib_samples=128)


@pytest.fixture(scope="module")
def teacher(digits_data):
    """LeNet-5 (8x8 variant, 131k params) trained 3 epochs on digits: ~90 % test accuracy."""
    from slimkit.models import build_model
    from slimkit.training import TrainConfig, train

    torch.manual_seed(0)
    model = build_model("lenet5", image_size=8)
    return train(model, digits_data, TrainConfig(epochs=3, seed=0))
