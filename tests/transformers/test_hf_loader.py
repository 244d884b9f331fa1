import json

import pytest

from slimkit.errors import ConfigError, UnsafeFileError
from slimkit.transformers import check_folder, default_model_folder


def test_bundled_minilm_passes_checks():
    cfg = check_folder(default_model_folder())
    assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 384


def test_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist or is not a directory$"):
        check_folder(tmp_path / "nope")
    monkeypatch.chdir(tmp_path)  # a Hub id is not a folder here: say how to get one
    with pytest.raises(ConfigError, match=r"Hub id, download it first \(huggingface-cli download"):
        check_folder("sentence-transformers/all-MiniLM-L6-v2")


def test_cli_smoothing_alpha_is_the_librarys():
    from slimkit.cli.hf import _alpha
    from slimkit.transformers import SmoothConfig

    assert _alpha.default == SmoothConfig().alpha  # the CLI said 0.5 while the API used 0.7


def test_not_a_hf_folder_names_missing_file(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ConfigError, match="config.json is missing"):
        check_folder(tmp_path)


def _bert_config(tmp_path, **over):
    cfg = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8}
    cfg.update(over)
    (tmp_path / "config.json").write_text(json.dumps(cfg))


def test_missing_weights_named(tmp_path):
    _bert_config(tmp_path)
    with pytest.raises(ConfigError, match="model.safetensors is missing"):
        check_folder(tmp_path)


def test_pickled_weights_refused(tmp_path):
    _bert_config(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeFileError, match="never runs code from a file"):
        check_folder(tmp_path)


def test_missing_tokenizer_named(tmp_path):
    _bert_config(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="tokenizer.json"):
        check_folder(tmp_path)


def test_unsupported_architecture_lists_supported(tmp_path):
    _bert_config(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(
        ConfigError, match=r"unsupported architecture.*supported: model_type \['bert'\].*BertModel"
    ):
        check_folder(tmp_path)
