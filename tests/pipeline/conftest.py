"""Small recipes for pipeline tests (digits, tiny models, few batches)."""

import pytest


def tiny_recipe(**over):
    raw = {
        "name": "tiny",
        "model": {"zoo": "lenet300"},
        "data": {
            "dataset": "digits",
            "train_samples": 600,
            "test_samples": 200,
            "calib_samples": 64,
        },
        "seed": 0,
        "measure": {"latency_runs": 3, "onnx": False},
        "stages": [
            {"train": {"epochs": 2, "lr": 0.003}},
            {"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
            {"finetune": {"epochs": 1, "lr": 0.001}},
            {"export": {"formats": ["slim"]}},
        ],
    }
    raw.update(over)
    return raw


@pytest.fixture
def tiny():
    return tiny_recipe
