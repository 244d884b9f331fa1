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
