"""`decompose`/`split` without --data read --dataset only for the image size: a misspelt name
meant 28x28 and wrote a model for MNIST's images without a word."""

from slimkit.cli import main


def test_an_unknown_dataset_name_is_refused_without_data(capsys, tmp_path):
    out = tmp_path / "m.safetensors"
    argv = ["decompose", "lenet300", "--dataset", "digit", "--runs", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'digit'" in err and "['digits', 'mnist5k']" in err
    assert not out.exists()
    assert main(["split", "lenet5", "--dataset", "digit", "--out", str(tmp_path / "s")]) == 2
    assert "unknown dataset 'digit'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
