"""`slimkit quantize`: every weight-only method through the CLI, --set parsing, errors."""

import pytest

import slimkit as sk
from slimkit.cli import main
from slimkit.quantization import METHODS, method_config, quantized_layers, weight_codes


@pytest.mark.parametrize(
    ("method", "sets", "bits"),
    [
        ("kmeans", ["bits=3"], 3),
        ("linear", ["bits=4", "symmetric=false"], 4),
        ("log2", ["bits=5", "per_channel=false"], 5),
        ("bf16", [], 16),
    ],
)
def test_quantize_command(tmp_path, capsys, method, sets, bits):
    out = tmp_path / "q.safetensors"
    args = ["quantize", "lenet5", "--method", method, "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SQNR dB" in printed and "packed" in printed and "file written" in printed
    model = sk.load(out)
    layers = quantized_layers(model)
    assert len(layers) == 4
    assert {weight_codes(m).bits for m in layers.values()} == {bits}


def test_mixed_with_data_and_targets(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    args = [
        "quantize",
        "lenet300",
        "--method",
        "mixed",
        "--data",
        "digits",
        "--out",
        str(out),
        "--set",
        "budget_bits_per_weight=3",
        "--set",
        "candidates=[2, 4]",
        "--set",
        "calib_batches=1",
        "--set",
        "ignore=[fc3]",
    ]
    assert main(args) == 0
    model = sk.load(out)
    assert "fc3" not in quantized_layers(model)
    assert "accuracy" in capsys.readouterr().out


def test_bad_input_exit_code_2(capsys):
    assert main(["quantize", "lenet5", "--method", "kmeanz"]) == 2
    assert "method must be one of" in capsys.readouterr().err
    assert main(["quantize", "lenet5", "--method", "linear", "--set", "bits=12"]) == 2
    assert "bits must be in 1..8, but got 12" in capsys.readouterr().err
    assert main(["quantize", "lenet5", "--method", "linear", "--set", "bits"]) == 2


def test_methods_map():
    assert {"linear", "log2", "kmeans", "fp16", "bf16", "mixed"} <= set(METHODS)
    assert method_config("kmeans", {"bits": 2}).bits == 2


def test_int8_dynamic_command_stores_codes(tmp_path, capsys):
    # Weights that round to a negative zero used to fail the bit-exact code check ("0 value(s)
    # off its linear 8-bit grid") on every model.
    out = tmp_path / "q8.safetensors"
    assert main(["quantize", "lenet300", "--method", "int8-dynamic", "--out", str(out)]) == 0
    layers = quantized_layers(sk.load(out))
    assert layers and {weight_codes(m).bits for m in layers.values()} == {8}


def test_int8_static_command_reports_sqnr_of_quantization_alone(tmp_path, monkeypatch):
    # `--method int8-static` folds BatchNorm before quantizing; the printed SQNR compared the
    # int8 weights with the unfolded ones, so BN rescaling showed up as quantization noise.
    import slimkit.cli.quantize as cli_quantize
    from slimkit.testing import randomize_batchnorm

    src = tmp_path / "bn.safetensors"
    sk.save(randomize_batchnorm(sk.build_model("resnet", image_size=8, seed=0)), src)
    tables: dict[str, list[list[object]]] = {}
    monkeypatch.setattr(
        cli_quantize, "print_table", lambda title, cols, rows: tables.setdefault(cols[0], rows)
    )
    args = ["quantize", str(src), "--method", "int8-static", "--data", "digits"]
    args += ["--set", "calib_samples=64", "--out", str(tmp_path / "q8.safetensors")]
    assert main(args) == 0
    sqnr = {row[0]: row[4] for row in tables["layer"]}
    assert len(sqnr) == 10 and "stem.0" in sqnr
    assert min(sqnr.values()) > 40, sqnr  # int8 per channel, BN folding not counted as noise


def test_a_model_for_other_images_names_quantizes_own_data_flag(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    sk.save(sk.build_model("lenet5"), path)  # 28x28 (mnist5k)
    argv = ["quantize", str(path), "--method", "int8-static", "--data", "digits"]
    assert main([*argv, "--out", str(tmp_path / "q.safetensors")]) == 2
    err = capsys.readouterr().err
    # it named --dataset, which quantize does not have
    assert "but --data digits gives 8x8; pass --data mnist5k" in err
