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


class _CountingLoader:
    """(x, y) batches that count how often the scan started reading them."""

    def __init__(self) -> None:
        self.reads = 0

    def __iter__(self):
        self.reads += 1
        yield torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize("name", ["sens.pdf", "blocker/sens.png", "."])
def test_bad_plot_path_is_refused_before_the_scan(tmp_path, name):
    # The plot path used to be checked only when writing, after the whole scan; a PNG was
    # also written under any name (sens.pdf).
    (tmp_path / "blocker").write_text("a file where a folder should be")
    loader = _CountingLoader()
    model = sk.build_model("lenet300", image_size=8, seed=0)
    target = tmp_path if name == "." else tmp_path / name
    with pytest.raises(ConfigError, match="must end in .png|is a file, not a folder|is a folder"):
        sensitivity_scan(model, loader, [0.5], plot=target)
    assert loader.reads == 0
    assert not (tmp_path / "sens.pdf").exists()
