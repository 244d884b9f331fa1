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
