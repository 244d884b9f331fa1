from pathlib import Path

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


def test_usage_errors_are_a_message_and_exit_2_not_a_traceback(capsys):
    # typer >= 0.2x raises its vendored click's errors (typer._click), which are not click's
    # classes; main() must still show them as usage messages.
    assert main([]) == 2  # no command: the help
    assert "COMMAND" in capsys.readouterr().out
    for argv, message in [
        (["nosuchcmd"], "No such command 'nosuchcmd'"),
        (["inspect", "--nosuch"], "No such option: --nosuch"),
        (["inspect"], "Missing argument 'model'"),
        (["hf", "embed"], "Missing option '--text'"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_a_commands_exit_code_is_returned(monkeypatch, capsys, tmp_path):
    # compress turns Ctrl-C into typer.Exit(130); not standalone, typer returns that code
    import slimkit.pipeline

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(slimkit.pipeline, "compress", interrupted)
    recipe = Path(__file__).parents[1] / "examples" / "quick_digits.yaml"
    assert main(["compress", str(recipe), "--out", str(tmp_path / "run")]) == 130
    assert "--resume" in capsys.readouterr().out


def test_an_output_that_would_overwrite_an_input_is_refused(capsys, tmp_path):
    model = tmp_path / "m.safetensors"
    assert (
        main(["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out", str(model)])
        == 0
    )
    before = model.read_bytes()
    capsys.readouterr()
    cases = [
        (
            ["distill", "--teacher", str(model), "--student", "lenet300", "--out", str(model)],
            "--out '%s' is the same file as --teacher",
        ),
        (
            ["quantize", str(model), "--method", "linear", "--out", str(model)],
            "--out '%s' is the same file as the model",
        ),
        (
            [
                "prune",
                str(model),
                "--dataset",
                "digits",
                "--out",
                str(tmp_path / "p.safetensors"),
                "--sparse-out",
                str(tmp_path / "p.safetensors"),
            ],
            "is the same file as --out",
        ),
        (["export", str(model), "--out", str(model)], "--out must name an .onnx file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert (message % model if "%s" in message else message) in capsys.readouterr().err
    assert model.read_bytes() == before and not (tmp_path / "p.safetensors").exists()


def test_an_output_path_blocked_by_a_file_or_folder_is_a_message(capsys, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    folder = tmp_path / "adir.safetensors"
    folder.mkdir()
    recipe = Path(__file__).parents[1] / "examples" / "quick_digits.yaml"
    cases = [
        (["export", "lenet5", "--out", str(blocker / "m.onnx")], "afile' is a file, not a folder"),
        (["export", "lenet5", "--out", str(tmp_path / "adir.onnx")], None),
        (["compress", str(recipe), "--out", str(blocker / "run")], "is a file, not a folder"),
        (["split", "lenet5", "--at", "conv1", "--out", str(blocker)], "is a file, not a folder"),
    ]
    (tmp_path / "adir.onnx").mkdir()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "cannot write" in err and (message or "it is a folder") in err, (argv, err)
    assert blocker.read_text() == "not a folder" and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.onnx", "adir.safetensors", "afile"]


def test_bench_refuses_zero_runs(capsys):
    assert main(["bench", "lenet5", "--runs", "0"]) == 2
    assert "runs must be at least 1, but got 0" in capsys.readouterr().err


def test_a_model_file_for_another_image_size_is_refused_before_any_work(capsys, tmp_path):
    # an 8x8 digits model fed MNIST (28x28) failed in torch's first matmul
    path = tmp_path / "digits.safetensors"
    assert (
        main(["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out", str(path)]) == 0
    )
    capsys.readouterr()
    out = tmp_path / "student.safetensors"
    for argv in [
        ["eval", str(path), "--dataset", "mnist5k"],
        ["prune", str(path), "--out", str(out)],
        ["distill", "--teacher", str(path), "--student", "lenet300", "--out", str(out)],
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "takes 8x8 images, but --dataset mnist5k gives 28x28" in err, err
        assert "--dataset digits" in err and "Traceback" not in err
    assert not out.exists()


def test_image_size_threads_and_onnx_teacher_are_checked(capsys, tmp_path):
    for argv, message in [
        (["inspect", "lenet5", "--image-size", "0"], "--image-size must be in 4..256"),
        (
            ["export", "lenet300", "--image-size", "100000", "--out", str(tmp_path / "m.onnx")],
            "--image-size must be in 4..256",
        ),
        (["bench", "lenet5", "--threads", "0"], "threads must be 1..256, but got 0"),
        (["bench", "lenet5", "--threads", "100000"], "threads must be 1..256"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    garbage = tmp_path / "t.onnx"
    garbage.write_bytes(b"\x08\xff\xff\xff garbage")
    folder = tmp_path / "d.onnx"
    folder.mkdir()
    for teacher, message in [(garbage, "is not a readable ONNX model"), (folder, "is a folder")]:
        argv = ["distill", "--teacher", str(teacher), "--student", "lenet300"]
        assert main([*argv, "--out", str(tmp_path / "s.safetensors")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_a_blocked_out_is_refused_before_training_and_files_get_the_umask_mode(capsys, tmp_path):
    import os

    blocker = tmp_path / "afile"
    blocker.write_text("user data")
    argv = ["train", "lenet300", "--dataset", "digits", "--epochs", "1"]
    assert main([*argv, "--out", str(blocker / "m.safetensors")]) == 2
    assert "'afile' is a file, not a folder" in capsys.readouterr().err.replace(
        str(tmp_path) + "/", ""
    )
    assert blocker.read_text() == "user data"
    assert main([*argv, "--out", str(tmp_path / "m.safetensors")]) == 0
    # mkstemp made artifacts 0600 whatever the umask; now the mode a plain open() gives
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_negative_export_tolerance_is_an_option_error_not_a_parity_failure(capsys, tmp_path):
    assert main(["export", "lenet5", "--atol", "-1", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "atol (the parity tolerance) must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_untrained_zoo_teacher_is_refused(capsys, tmp_path):
    out = tmp_path / "s.safetensors"
    argv = ["distill", "--teacher", "lenet5", "--student", "lenet300", "--dataset", "digits"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "is a zoo name, which builds an untrained model" in capsys.readouterr().err
    assert not out.exists()


def test_train_refuses_a_quantized_model_file(capsys, tmp_path):
    import slimkit as sk

    q = sk.quantize_(sk.build_model("lenet300", image_size=8), sk.KMeansQuantization(bits=2))
    sk.save(q, tmp_path / "q.safetensors")
    out = tmp_path / "t.safetensors"
    argv = ["train", str(tmp_path / "q.safetensors"), "--dataset", "digits", "--out", str(out)]
    assert main([*argv, "--epochs", "1"]) == 2  # trained off the codebook, saved as k-means
    assert "slimkit train would rewrite layer(s)" in capsys.readouterr().err
    assert not out.exists()


def test_export_writes_int8_onnx_for_an_int8_model_and_bench_refuses_it(capsys, tmp_path):
    import onnx

    import slimkit as sk

    q = sk.quantize_(sk.build_model("lenet300", image_size=8), sk.DynamicInt8())
    sk.save(q, tmp_path / "q.safetensors")
    out = tmp_path / "q.onnx"
    assert main(["export", str(tmp_path / "q.safetensors"), "--out", str(out)]) == 0
    assert "int8 ONNX" in capsys.readouterr().out  # was a plain fp32 graph
    types = {t.data_type for t in onnx.load(str(out)).graph.initializer}
    assert onnx.TensorProto.INT8 in types or onnx.TensorProto.UINT8 in types
    assert main(["bench", str(tmp_path / "q.safetensors")]) == 2  # timed the fp32 export
    assert "holds an int8 model" in capsys.readouterr().err


def test_a_model_file_named_for_another_format_is_refused_before_any_work(capsys, tmp_path):
    import pytest

    import slimkit as sk
    from slimkit.errors import ConfigError

    for name in ("q.slim", "q.onnx", "q.pt"):  # safetensors was written under each name
        out = tmp_path / name
        argv = ["quantize", "lenet300", "--method", "kmeans"]
        assert main([*argv, "--out", str(out)]) == 2
        assert f"names a {out.suffix} file" in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ConfigError, match=r"name it m.safetensors"):
        sk.save(sk.build_model("lenet300", image_size=8), tmp_path / "m.slim")


def test_train_seed_sets_the_zoo_models_initial_weights(capsys, tmp_path):
    # --seed reached only train(); a zoo model was built from torch's default seed, so
    # `--epochs 0 --seed 1` and `--seed 2` wrote the same file.
    import torch

    from slimkit import io as slim_io

    def weights(seed: int, name: str) -> torch.Tensor:
        out = tmp_path / name
        argv = ["train", "lenet300", "--dataset", "digits", "--epochs", "0", "--out", str(out)]
        torch.manual_seed(0)  # the same global state: only --seed may tell the runs apart
        assert main([*argv, "--seed", str(seed)]) == 0
        return slim_io.load(out).fc1.weight.detach()

    a, b, again = (
        weights(1, "a.safetensors"),
        weights(2, "b.safetensors"),
        weights(1, "c.safetensors"),
    )
    assert not torch.equal(a, b)
    assert torch.equal(a, again)
    assert main(["train", "lenet300", "--dataset", "digits", "--seed", "-1"]) == 2
    assert "seed must be" in capsys.readouterr().err


def test_an_unexpected_error_exits_3_with_its_traceback_not_1_as_a_missed_gate(monkeypatch, capsys):
    import slimkit.metrics.flops

    def broken(*_a, **_k):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(slimkit.metrics.flops, "flops_by_module", broken)
    assert main(["inspect", "lenet5"]) == 3  # 1 means a missed accuracy gate
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal bug" in err
    assert "slimkit: internal error: RuntimeError: an internal bug; this is a bug" in err
