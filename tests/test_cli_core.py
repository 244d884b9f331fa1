from slimkit.cli import main


def test_inspect_and_errors(capsys, tmp_path):
    assert main(["inspect", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "431,080" in out
    assert main(["inspect", "vgg"]) == 2
    assert "neither a zoo model" in capsys.readouterr().err


def test_train_export_bench_roundtrip(capsys, tmp_path):
    path = tmp_path / "m.safetensors"
    assert (
        main(["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out", str(path)]) == 0
    )
    assert path.exists()
    assert main(["export", str(path), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["bench", str(path), "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "ort" in out and "torch" in out
