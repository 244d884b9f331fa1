"""Sensitivity scan: table keyed by layer name, monotone-ish curves, model untouched, plot."""

import pytest
import torch

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.pruning import sensitivity_scan
from slimkit.training import TrainConfig, train


@pytest.fixture
def trained(digits):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    return train(model, digits, TrainConfig(epochs=3, lr=3e-3))


def test_scan_table_and_plot(trained, digits, tmp_path):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    png = tmp_path / "sens.png"
    table = sensitivity_scan(trained, digits, [0.0, 0.5, 0.9, 0.99], plot=png)
    assert list(table.accuracy) == ["fc1", "fc2", "fc3"]
    assert table.baseline > 0.8
    for name, accs in table.accuracy.items():
        assert accs[0] == table.baseline  # sparsity 0 changes nothing
        assert accs[-1] <= accs[0] + 0.02, name  # pruning 99% of a layer does not help
    assert min(table.accuracy["fc1"][-1], table.accuracy["fc3"][-1]) < table.baseline - 0.1
    assert table.drop("fc1")[0] == 0.0
    assert table.max_sparsity(0.0)["fc1"] >= 0.0
    for k, v in trained.state_dict().items():  # model unchanged
        assert torch.equal(v, before[k]), k
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert table.to_dict()["sparsities"] == [0.0, 0.5, 0.9, 0.99]


def test_scan_targets_and_bad_input(trained, digits):
    table = sensitivity_scan(trained, digits.test, [0.5], targets=["fc2"], max_batches=1)
    assert list(table.accuracy) == ["fc2"]
    with pytest.raises(ConfigError, match="sparsity must be in"):
        sensitivity_scan(trained, digits, [1.0])
    with pytest.raises(ConfigError, match="at least one"):
        sensitivity_scan(trained, digits, [])
