from slimkit.cli import main


def test_hf_embed_bad_folder_exit_code_and_message(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["hf", "embed", str(tmp_path), "--text", "hello"]) == 2
    assert "config.json is missing" in capsys.readouterr().err


def test_hf_quantize_bad_keep_layers(capsys):
    assert main(["hf", "quantize", "--out", "unused", "--keep-layers", "0,x"]) == 2
    assert "comma-separated indices" in capsys.readouterr().err
