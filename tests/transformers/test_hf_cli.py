from slimkit.cli import main


def test_hf_embed_bad_folder_exit_code_and_message(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["hf", "embed", str(tmp_path), "--text", "hello"]) == 2
    assert "config.json is missing" in capsys.readouterr().err


def test_hf_quantize_bad_keep_layers(capsys):
    assert main(["hf", "quantize", "--out", "unused", "--keep-layers", "0,x"]) == 2
    assert "comma-separated indices" in capsys.readouterr().err


def test_hf_quantize_bad_ffn_fraction_and_text_source(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["hf", "quantize", "--out", str(out), "--ffn-fraction", "1.5"]) == 2
    assert "ffn_fraction" in capsys.readouterr().err
    assert (
        main(["hf", "quantize", "--out", str(out), "--ffn-fraction", "0.5", "--unlabelled", "x"])
        == 2
    )
    assert "unlabelled_text must be" in capsys.readouterr().err
    assert not out.exists()


def test_hf_embed_truncates_with_a_one_line_warning(capsys):
    assert main(["hf", "embed", "--text", "word " * 300, "--text", "short"]) == 0
    captured = capsys.readouterr()
    assert "slimkit: warning: 1 sentence(s) exceed the model's max length of 256" in captured.err
    assert "_contextlib.py" not in captured.err  # no source line from torch's no_grad wrapper
    assert "cosine similarity" in captured.out


def test_hf_quantize_refuses_a_negative_fraction_or_step_count(tmp_path, capsys):
    # these used to mean "nothing to prune" and ran int8 alone (exit 0)
    out = tmp_path / "never"
    assert main(["hf", "quantize", "--out", str(out), "--ffn-fraction", "-0.1"]) == 2
    assert "ffn_fraction must be in" in capsys.readouterr().err
    assert main(["hf", "quantize", "--out", str(out), "--distill-steps", "-5"]) == 2
    assert "distill.steps must be in" in capsys.readouterr().err
    assert not out.exists()


def test_hf_quantize_checks_keep_layers_and_the_out_folder_before_writing(tmp_path, capsys):
    # '--keep-layers 0,99' used to fail after the 90 MB fp32 export, which stayed behind
    out = tmp_path / "never"
    assert main(["hf", "quantize", "--out", str(out), "--keep-layers", "0,99"]) == 2
    assert (
        "subset of 0..5, each index once (the model has 6 encoder layers)"
        in capsys.readouterr().err
    )
    assert not out.exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "model.onnx").write_text("the user's own model")
    assert main(["hf", "quantize", "--out", str(user)]) == 2
    assert "already holds files slimkit did not write (model.onnx)" in capsys.readouterr().err
    assert (user / "model.onnx").read_text() == "the user's own model"


def test_a_failed_encoder_run_removes_what_it_wrote(tmp_path, monkeypatch):
    import pytest

    from slimkit import atomic
    from slimkit.errors import ConfigError
    from slimkit.transformers import api

    def fail(*_a, **_k):
        raise RuntimeError("boom after the fp32 export")

    monkeypatch.setattr("slimkit.transformers.int8.quantize_encoder", fail)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        api.compress_encoder(None, out, sentences=["a short sentence."] * 4, measure=None)
    assert not out.exists()  # the folder was new: removed with the fp32 ONNX inside
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / "metrics.json").write_text("{}")
    atomic.mark_run_folder(out)  # an earlier run's folder
    with pytest.raises(RuntimeError, match="boom"):
        api.compress_encoder(None, out, sentences=["a short sentence."] * 4, measure=None)
    names = sorted(p.name for p in out.iterdir())
    assert names == [".slimkit-run", "metrics.json", "notes.txt"]
    # an earlier run's files are not half replaced: the failed run wrote a new fp32 ONNX first,
    # which used to overwrite the earlier one beside the earlier model.onnx and metrics
    (out / "model_fp32.onnx").write_text("earlier run")
    with pytest.raises(RuntimeError, match="boom"):
        api.compress_encoder(None, out, sentences=["a short sentence."] * 4, measure=None)
    assert (out / "model_fp32.onnx").read_text() == "earlier run"
    assert not (out / ".slimkit-partial").exists()
    # a hidden folder of that name in a user's folder is not taken for a killed run's leftover
    user = tmp_path / "user"
    (user / ".slimkit-partial").mkdir(parents=True)
    (user / ".slimkit-partial" / "download.bin").write_text("the user's")
    with pytest.raises(ConfigError, match="holds '.slimkit-partial' but is not a slimkit run"):
        api.compress_encoder(None, user, sentences=["a short sentence."] * 4, measure=None)
    assert (user / ".slimkit-partial" / "download.bin").read_text() == "the user's"


def test_hf_embed_refuses_a_blank_sentence(capsys):
    assert main(["hf", "embed", "-t", "A cat.", "-t", "  "]) == 2
    assert "--text must be a sentence, but text 1 is '  '" in capsys.readouterr().err


def test_a_second_encoder_run_removes_the_tokenizer_files_only_the_first_copied(
    tmp_path, monkeypatch
):
    import json

    from slimkit.transformers import api

    copies = [["vocab.txt", "tokenizer.json", "config.json"], ["tokenizer.json", "config.json"]]

    def fake(folder, stage, *_a):  # what _compress_encoder writes: models and tokenizer files
        names = copies.pop(0)
        for name in ["model.onnx", *names]:
            (stage / name).write_text("this run")
        return {"tokenizer_files": names}

    monkeypatch.setattr(api, "_compress_encoder", fake)
    out = tmp_path / "run"
    api.compress_encoder(None, out, sentences=["a short sentence."] * 4, measure=None)
    assert (out / "vocab.txt").is_file()
    (out / "notes.txt").write_text("the user's")  # not recorded: never removed
    (out / "tokenizer_config.json").write_text("the user's")  # a tokenizer name, not recorded
    api.compress_encoder(None, out, sentences=["a short sentence."] * 4, measure=None)
    assert not (out / "vocab.txt").exists()  # the first model's, beside the second's tokenizer
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "tokenizer_config.json").read_text() == "the user's"
    assert json.loads((out / "metrics.json").read_text())["tokenizer_files"] == [
        "tokenizer.json",
        "config.json",
    ]
