"""Export a SentenceEncoder to ONNX with dynamic batch and sequence length, parity-checked,
then apply ONNX Runtime's transformer graph optimizer (attention, layer-norm, GELU fusion).

Graph: inputs ``input_ids`` and ``attention_mask`` (int64, (batch, seq)) -> ``embedding``
(float32, (batch, D)). Parity is checked on two batches of different batch size and length so
both dynamic axes are exercised; the optimized graph is checked again against PyTorch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from slimkit import atomic
from slimkit.errors import ConfigError, ParityError

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "embedding"
OPSET = 17

PARITY_SENTENCES = (
    "A short one.",
    "The quick brown fox jumps over the lazy dog near the quiet river bank this morning.",
    "Compressed models must agree with the original.",
)


@dataclasses.dataclass(frozen=True)
class EncoderExport:
    path: str
    bytes: int
    max_abs_diff: float  # max |ORT - torch| over the parity batches
    tolerance: float
    fused_ops: dict[str, int]  # ORT optimizer fusion statistics (empty when not optimized)
    simplified: dict | None = None  # graph_simplify.SimplifyResult.to_dict() when simplified


def export_bytes(module: nn.Module, example: dict[str, torch.Tensor]) -> bytes:
    """TorchScript-based export (``dynamo=False``) with dynamic (batch, seq) axes."""
    axes = {n: {0: "batch", 1: "seq"} for n in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example["input_ids"], example["attention_mask"]),
            buf,  # type: ignore[arg-type]
            input_names=INPUT_NAMES,
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_axes=axes,
            dynamo=False,
            do_constant_folding=True,
            custom_opsets={"com.microsoft": 1},  # packed.py's fused attention ops
        )
    return buf.getvalue()


def optimize_bytes(data: bytes, num_heads: int, hidden_size: int) -> tuple[bytes, dict[str, int]]:
    """ORT transformer optimizer for BERT: EmbedLayerNorm, Attention, SkipLayerNorm, BiasGelu.

    ``num_heads=0``/``hidden_size=0`` lets the optimizer read them from the graph (needed after
    head pruning, when layers differ).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load_from_string(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(
            model, model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    # Fused ops live in the com.microsoft domain; declare it so the ONNX checker accepts them.
    if not any(o.domain == "com.microsoft" for o in opt.model.opset_import):
        opt.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return opt.model.SerializeToString(), stats


@torch.no_grad()
def parity(
    module: nn.Module,
    onnx_model: bytes | str | os.PathLike[str],
    tokenizer: Any,
    sentences: Sequence[str] = PARITY_SENTENCES,
    max_length: int = 256,
) -> float:
    """Max |ORT - PyTorch| embedding difference over (1, T1) and (N, T2) batches."""
    from slimkit.export.ort import make_session
    from slimkit.transformers.embed import tokenize

    sess = make_session(onnx_model, threads=1)
    worst = 0.0
    for batch in ([sentences[0]], list(sentences)):
        enc = tokenize(tokenizer, batch, max_length)
        ref = module.eval()(enc["input_ids"], enc["attention_mask"]).float().numpy()
        got = sess.run(None, {n: enc[n].numpy() for n in INPUT_NAMES})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def check_export_args(
    path: str | os.PathLike[str], num_heads: Any, hidden_size: Any, max_length: Any, module: Any
) -> None:
    """Refuse, before the export, an output path that cannot be written and head/size values
    ORT's optimizer would trip on (0 = read them from the graph)."""
    from slimkit.transformers.embed import check_max_length, check_sentence_encoder

    # Any other nn.Module (say a bare nn.Linear) would fail deep inside the tracer with a
    # TypeError about input_ids: the export feeds (input_ids, attention_mask) and reads the
    # encoder's config for the parity and fusion steps.
    check_sentence_encoder(module)
    atomic.check_writable(path)
    check_max_length(max_length, module)
    for name, value in (("num_heads", num_heads), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"{name} must be an integer >= 0 (0 = read it from the graph), but got {value!r}"
            )
    if num_heads and hidden_size and hidden_size % num_heads:
        raise ConfigError(
            f"hidden_size must be a multiple of num_heads, but got hidden_size={hidden_size}, "
            f"num_heads={num_heads}; pass the model's values (Encoder.num_heads, "
            "Encoder.hidden_size) or 0 for both"
        )


def export_encoder(
    module: nn.Module,
    tokenizer: Any,
    path: str | os.PathLike[str],
    *,
    optimize: bool = True,
    simplify: bool = False,
    packed: bool = False,
    attention: str = "Attention",
    num_heads: int = 0,
    hidden_size: int = 0,
    atol: float = 1e-4,
    max_length: int = 256,
) -> EncoderExport:
    """Export, optionally simplify or fuse with ORT's optimizer, check parity, write ``path``.

    ``simplify`` (``graph_simplify.simplify_model``: constant head reshapes, one padding mask,
    merged Q/K/V) applies to the unfused graph only; ``optimize=True`` ignores it (ORT's fusion
    rewrites the same subgraphs into Attention). ``packed`` exports the padding-free form
    (``packed.PackedSentenceEncoder``: only attention sees padding slots); it needs
    ``simplify=True`` and ``optimize=False``; ``attention`` is how its attention blocks export
    (``packed.ATTENTION_OPS``: ORT's Attention with Q/K/V inside, MultiHeadAttention for the
    core only, or "onnx" for standard ops). Raises ParityError when max |ORT - torch| >
    ``atol`` on the parity sentences (always against ``module`` itself).
    """
    from slimkit.transformers.embed import tokenize
    from slimkit.transformers.packed import ATTENTION_OPS, PackedSentenceEncoder

    check_export_args(path, num_heads, hidden_size, max_length, module)
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise ConfigError(f"atol must be a number >= 0 (e.g. 1e-4), but got {atol!r}")
    if attention not in ATTENTION_OPS:
        raise ConfigError(f"attention must be one of {list(ATTENTION_OPS)}, but got {attention!r}")
    if packed and (optimize or not simplify):
        raise ConfigError(
            f"packed export needs simplify=True and optimize=False (ORT's attention fusion "
            f"matches the padded graph only), but got simplify={simplify}, optimize={optimize}; "
            f"set packed=False to use ORT's fusion"
        )
    example = tokenize(tokenizer, list(PARITY_SENTENCES[:2]), max_length)
    if packed:
        data = export_bytes(PackedSentenceEncoder(module, attention), example)
    else:
        data = export_bytes(module, example)
    stats: dict[str, int] = {}
    simplified = None
    if optimize:
        data, stats = optimize_bytes(data, num_heads, hidden_size)
    elif simplify:
        from slimkit.transformers.graph_simplify import simplify_bytes

        # merge_heads: one head Reshape + Transpose for Q/K/V. On the padded graph it cost 13-15 %
        # at batch 32; on the packed one, MiniLM int8 at 2 threads (12 interleaved rounds):
        # batch 1 1.26 vs 1.38 ms, batch 32 23.2 vs 23.0 ms.
        data, res = simplify_bytes(data, merge_heads=packed)
        simplified = res.to_dict()
    diff = parity(module, data, tokenizer, max_length=max_length)
    if not diff <= atol:
        raise ParityError(
            f"ONNX export of the encoder disagrees with PyTorch: max |diff| = {diff:.3g} > "
            f"tolerance {atol:g}; try optimize=False to tell a fusion problem from an export one"
        )
    atomic.write_bytes(path, data)
    return EncoderExport(os.fspath(path), len(data), diff, atol, stats, simplified)
