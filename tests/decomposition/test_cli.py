"""`slimkit decompose` and `slimkit split`: files written, tables printed, bad input -> exit 2."""

import json

from slimkit import io as slim_io
from slimkit.cli import main
from slimkit.cli.decompose import parse_sets
from slimkit.decomposition import decomposition_plan


def test_parse_sets_reads_yaml_values():
    assert parse_sets(["ratio=0.5", "targets=[fc1, fc2]", "skip_if_larger=false"]) == {
        "ratio": 0.5,
        "targets": ["fc1", "fc2"],
        "skip_if_larger": False,
    }


def test_decompose_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    rc = main(
        [
            "decompose",
            "lenet300",
            "--method",
            "svd",
            "--set",
            "ratio=0.2",
            "--dataset",
            "digits",
            "--runs",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "flops" in text and "ort_ms" in text and "fc1" in text
    loaded = slim_io.load(out)
    assert decomposition_plan(loaded)["fc1"]["rank"] == 13  # ceil(0.2 * 64)


def test_split_writes_the_pair(tmp_path, capsys):
    rc = main(
        [
            "split",
            "lenet5",
            "--dataset",
            "digits",
            "--bandwidth-mbps",
            "10",
            "--runs",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    assert "best cut" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "split.json").read_text())
    assert manifest["composition_max_abs_diff"] <= 1e-4


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["decompose", "lenet5", "--method", "svdd"]) == 2
    assert "must be one of" in capsys.readouterr().err
    assert main(["decompose", "lenet5", "--set", "rank=0", "--dataset", "digits"]) == 2
    assert (
        main(
            [
                "split",
                "resnet",
                "--at",
                "layers.0.conv1",
                "--dataset",
                "digits",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "Valid cut points" in capsys.readouterr().err


def test_a_method_with_nothing_to_decompose_and_a_last_layer_split_are_clear(capsys, tmp_path):
    # tucker on an all-Linear model printed an empty table and wrote an unchanged copy (exit 0)
    out = tmp_path / "d.safetensors"
    argv = ["decompose", "lenet300", "--method", "tucker", "--out", str(out), "--runs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "TuckerDecomposition found no layer to decompose" in err and "method svd" in err
    assert not out.exists()
    # splitting after the last layer was blamed on a residual block
    assert main(["split", "lenet5", "--at", "fc2", "--out", str(tmp_path / "s")]) == 2
    assert "it is the model's last layer" in capsys.readouterr().err


def test_decompose_that_shrinks_no_layer_and_runs_0_are_refused(capsys, tmp_path):
    out = tmp_path / "d.safetensors"
    argv = ["decompose", "lenet300", "--dataset", "digits", "--out", str(out), "--runs", "1"]
    # ratio 1.0: every layer's factors would be larger, so all were skipped (exit 0, a copy)
    assert main([*argv, "--set", "ratio=1.0"]) == 2
    captured = capsys.readouterr()
    assert "svd decomposed no layer (fc1: factors would hold" in captured.err
    assert "would hold" in captured.out  # the table says why each layer was skipped
    assert not out.exists()
    assert main([*argv[:-2], "--runs", "0"]) == 2  # was refused by the timer, afterwards
    assert "--runs must be at least 1" in capsys.readouterr().err
