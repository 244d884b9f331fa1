"""Sentence embeddings: tokenise (truncating with a warning), run, pool, L2-normalise.

``SentenceEncoder`` wraps the HF model with its pooling so the same module is exported to ONNX
and distilled: ``(input_ids, attention_mask)`` of shape (B, T) -> embeddings (B, D).
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import ConfigError


class TruncationWarning(UserWarning):
    """Some sentences were longer than the model's max length and were cut."""


class SentenceEncoder(nn.Module):
    """HF encoder + pooling: (B, T) ids and mask -> (B, D) embeddings."""

    def __init__(self, model: nn.Module, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be 'mean' or 'cls', but got {pooling!r}")
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling, self.normalize)  # (B, T, D) -> (B, D)


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, pooling: str = "mean", normalize: bool = True
) -> torch.Tensor:
    """(B, T, D) token states + (B, T) mask -> (B, D); mean ignores padding."""
    if pooling == "cls":
        emb = hidden[:, 0]
    else:
        w = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        emb = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(emb, dim=-1) if normalize else emb


def check_sentence_encoder(module: Any, name: str = "module") -> None:
    """Refuse anything but a SentenceEncoder before the work that would fail deep inside on it
    (a bare nn.Linear, the HF model without pooling, or load_encoder's Encoder itself)."""
    if not isinstance(module, SentenceEncoder):
        raise ConfigError(
            f"{name} must be a SentenceEncoder (sentence_encoder(load_encoder(folder))), but got "
            f"{type(module).__name__}"
        )


def sentence_encoder(encoder: Any) -> SentenceEncoder:
    """The exportable module of a loaded :class:`~slimkit.transformers.loader.Encoder`."""
    if not all(hasattr(encoder, a) for a in ("model", "pooling", "normalize")):
        raise ConfigError(
            f"sentence_encoder takes what load_encoder returns, but got "
            f"{type(encoder).__name__}: {encoder!r:.80}; call sentence_encoder(load_encoder(folder))"
        )
    return SentenceEncoder(encoder.model, encoder.pooling, encoder.normalize).eval()


def _sentence_list(sentences: Sequence[str] | str, *, one_string_ok: bool = True) -> list[str]:
    """One string becomes a list of one (unless ``one_string_ok`` is false: where a corpus is
    expected, a string would be read character by character); anything but a non-empty list
    of strings is a ConfigError."""
    if isinstance(sentences, str):
        if not one_string_ok:
            raise ConfigError(
                f"sentences must be a list of strings, but got the string {sentences!r:.60}; "
                f"write [{sentences!r:.60}, ...]"
            )
        return [sentences]
    if (
        sentences is None
        or isinstance(sentences, (bytes, dict))
        or not hasattr(sentences, "__iter__")
    ):
        raise ConfigError(
            f"sentences must be a non-empty list of strings, but got "
            f"{type(sentences).__name__}: {sentences!r:.80}"
        )
    sentences = list(sentences)
    if not sentences:
        raise ConfigError("sentences must be a non-empty list of strings, but got an empty list")
    bad = [s for s in sentences if not isinstance(s, str)]
    if bad:
        raise ConfigError(f"sentences must be strings, but got {type(bad[0]).__name__}: {bad[0]!r}")
    return sentences


def check_max_length(max_length: Any, model: Any = None) -> None:
    """``max_length`` is an int >= 3 and, for a SentenceEncoder, at most its position limit."""
    if (
        isinstance(max_length, bool)
        or not isinstance(max_length, numbers.Integral)
        or int(max_length) < 3
    ):
        raise ConfigError(
            f"max_length must be an integer >= 3, but got {max_length!r}; "
            "[CLS] and [SEP] take 2 tokens"
        )
    config = getattr(getattr(model, "model", None), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and int(max_length) > limit:
        raise ConfigError(
            f"max_length must be at most the model's {limit} positions "
            f"(max_position_embeddings), but got {max_length}; pass max_length={limit} or less"
        )


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sentence; sentences past ``max_length`` tokens are cut with a warning."""
    sentences = _sentence_list(sentences)
    check_max_length(max_length)
    if not callable(tokenizer):  # None or a folder name: was "'NoneType' object is not callable"
        raise ConfigError(
            f"tokenizer must be a Hugging Face tokenizer (load_encoder(folder).tokenizer), but got "
            f"{type(tokenizer).__name__}: {tokenizer!r:.80}"
        )
    lengths = [len(ids) for ids in tokenizer(list(sentences), add_special_tokens=True)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        warnings.warn(
            f"{len(too_long)} sentence(s) exceed the model's max length of {max_length} tokens "
            f"(longest: {max(lengths)}); they were truncated to {max_length} tokens",
            TruncationWarning,
            stacklevel=3,
        )
    batch = tokenizer(
        list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def ort_runner(onnx_path: str | os.PathLike[str], threads: int = 2) -> Runner:
    """A runner over an ONNX Runtime session: int64 (B, T) ids and mask -> (B, D) float32."""
    from slimkit.export.ort import make_session

    return session_runner(make_session(onnx_path, threads=threads), onnx_path)


def session_runner(sess: Any, onnx_path: str | os.PathLike[str]) -> Runner:
    """A runner over ``sess`` once its graph is a sentence encoder's: inputs input_ids and
    attention_mask, fed by name, and a (B, D) embedding first out (what slimkit exports)."""
    from slimkit.transformers.onnx_export import INPUT_NAMES

    names = sorted(i.name for i in sess.get_inputs())
    out_shape = sess.get_outputs()[0].shape
    # An encoder exported by another tool (say Optimum: token_type_ids in, last_hidden_state
    # (B, T, D) out) failed inside ONNX Runtime or torch.cat, or gave 3-D "embeddings".
    if names != sorted(INPUT_NAMES) or len(out_shape) != 2:
        raise ConfigError(
            f"{str(onnx_path)!r} is not a sentence-embedding graph: it takes inputs {names} and "
            f"gives a first output of shape {out_shape}, where slimkit needs inputs "
            f"{INPUT_NAMES} and a (batch, dim) embedding; export the model with "
            "`slimkit hf export` or slimkit.transformers.export_encoder"
        )

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    return run


@torch.no_grad()
def embed(
    model: nn.Module | Runner | str | os.PathLike[str],
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 32,
) -> torch.Tensor:
    """Embed ``sentences`` with a SentenceEncoder, an ONNX file or a runner -> (N, D) float32.

    Batches are padded to their own longest sentence (sorted by length is not used, so the
    order of ``sentences`` is kept exactly).
    """
    sentences = _sentence_list(sentences)
    check_max_length(max_length, model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, but got {batch_size!r}")
    if isinstance(model, (str, os.PathLike)):
        model = ort_runner(model)
    elif not callable(model):
        raise ConfigError(
            f"model must be a SentenceEncoder, an ONNX file path or a runner, but got "
            f"{type(model).__name__}: {model!r:.80}"
        )
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenize(tokenizer, sentences[start : start + batch_size], max_length)
        if isinstance(model, nn.Module):
            emb = model.eval()(batch["input_ids"], batch["attention_mask"])
        else:
            emb = torch.from_numpy(
                np.asarray(model(batch["input_ids"].numpy(), batch["attention_mask"].numpy()))
            )
        out.append(emb.float())
    return torch.cat(out)
