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


@pytest.fixture
def mixed_precision_lenet300():
    """lenet300 (8x8) in float64 with values off the fp32 grid, one bf16 and one fp16 layer."""
    from slimkit.models import build_model

    model = build_model("lenet300", image_size=8, seed=0).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / 3)
    model.fc2.to(torch.bfloat16)
    model.fc3.to(torch.float16)
    return model


@pytest.fixture
def probe_calls(monkeypatch):
    """The ``call`` names preconditions.check_fits is probed with, in order (it still runs)."""
    from slimkit import preconditions

    calls: list[str] = []
    real = preconditions.check_fits

    def counting(model, data, call):
        calls.append(call)
        return real(model, data, call)

    monkeypatch.setattr(preconditions, "check_fits", counting)
    return calls
