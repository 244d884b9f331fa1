"""`slimkit prune` / `prune-scan` on digits: before/after table, files written, exit codes."""

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.cli import main
from slimkit.cli.prune import parse_sets
from slimkit.errors import ConfigError
from slimkit.pruning.sparse_storage import load_sparse


def test_parse_sets_nests_and_types():
    assert parse_sets(
        ["sparsity=0.9", "scope=global", "finetune.epochs=2", "targets=[fc1, fc2]"]
    ) == {"sparsity": 0.9, "scope": "global", "finetune": {"epochs": 2}, "targets": ["fc1", "fc2"]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["sparsity"])


def test_prune_command_writes_pruned_model(tmp_path, capsys):
    out, sparse = tmp_path / "p.safetensors", tmp_path / "p.sparse.safetensors"
    code = main(
        [
            "prune",
            "lenet300",
            "--method",
            "magnitude",
            "--set",
            "sparsity=0.9",
            "--set",
            "scope=layer",
            "--dataset",
            "digits",
            "--out",
            str(out),
            "--sparse-out",
            str(sparse),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "before" in text and "after" in text and "nonzeros" in text
    model = sk.load(out)
    w = model.fc1.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    assert not any("mask" in k for k in model.state_dict())
    state = load_sparse(sparse)
    for k, v in model.state_dict().items():
        assert np.array_equal(state[k], v.numpy()), k
    assert sparse.stat().st_size < 0.4 * out.stat().st_size
    assert torch.isfinite(model(torch.zeros(1, 1, 8, 8))).all()


def test_prune_command_bad_input(tmp_path, capsys):
    assert (
        main(
            [
                "prune",
                "lenet300",
                "--set",
                "sparsity=1.5",
                "--dataset",
                "digits",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "sparsity must be in [0.0, 1.0), but got 1.5" in capsys.readouterr().err
    assert main(["prune", "lenet300", "--method", "magnitud", "--dataset", "digits"]) == 2
    assert (
        main(
            [
                "prune",
                "lenet300",
                "--set",
                "targets=[fc9]",
                "--dataset",
                "digits",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "near matches" in capsys.readouterr().err


def test_prune_scan_command(tmp_path):
    png = tmp_path / "s.png"
    assert (
        main(
            [
                "prune-scan",
                "lenet300",
                "--dataset",
                "digits",
                "--sparsities",
                "0.5,0.9",
                "--plot",
                str(png),
                "--max-batches",
                "1",
            ]
        )
        == 0
    )
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("s.pdf", "--plot must end in .png (the sensitivity plot is written as PNG), but got"),
        ("blocker/s.png", "'{tmp}/blocker' is a file, not a folder; choose another path"),
        ("locked/s.png", "the folder '{tmp}/locked' is not writable; choose another path"),
    ],
)
def test_prune_scan_refuses_bad_plot_before_any_work(tmp_path, capsys, monkeypatch, name, message):
    import os

    import slimkit.cli.prune as cli_prune
    import slimkit.pruning.sensitivity as sens

    (tmp_path / "blocker").write_text("a file where a folder should be")
    (tmp_path / "locked").mkdir()
    real_access = os.access
    # Tests may run as root, for whom every folder is writable: deny 'locked' by hand.
    monkeypatch.setattr(
        sens.os,
        "access",
        lambda p, mode: False if str(p).endswith("locked") else real_access(p, mode),
    )
    loads: list[str] = []
    monkeypatch.setattr(cli_prune, "load_data", lambda n, *a, **k: loads.append(n))
    argv = ["prune-scan", "lenet300", "--dataset", "digits", "--plot", str(tmp_path / name)]
    assert main(argv) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert loads == []  # refused before the data, the model and the scan
    assert not (tmp_path / "s.pdf").exists()
