"""Padding-free ("packed") export of a BERT-family sentence encoder: no work on padding tokens.

A batch of B sentences padded to T tokens holds N = sum(mask) real tokens; on the packaged
English corpus, batches of 32 consecutive sentences are 75 % real tokens, so a quarter of every
matrix product, LayerNorm and GELU of the plain graph is spent on padding. Only attention needs
the (B, T) layout (each token attends to its own sentence), so the packed graph runs everything
else on the (N, D) stream of real tokens (as FasterTransformer's "remove padding" does):

    idx     = NonZero(mask.flat)                    (N,)    where each real token sits in (B*T)
    pad_idx = max(CumSum(mask.flat) - 1, 0)         (B, T)  the packed row each slot reads
    h       = embeddings(ids).flat[idx]             (N, D)
    per layer:  qkv = [query | key | value](h) (N, 3*H*d) -> rows gathered at pad_idx
                (B, T, 3*H*d) -> attention with the usual additive padding mask -> context
                (B*T, H*d) -> rows idx -> (N, H*d); then attention output, LayerNorms and FFN
                on (N, .)
    out     = pool(h gathered at pad_idx, mask)     (B, D)

A padding slot reads a copy of the previous real token's row instead of a zero row: its key and
value are masked out of every softmax exactly as before (the additive mask is the same) and its
query's output is never gathered back, so the embeddings equal the plain module's (tested) and
no zero-filled scatter is needed. The stream is 2-D on purpose: ORT then does not fuse residual
Add + LayerNorm into SkipLayerNormalization (it fuses 3-D inputs only), which on ORT 1.32's CPU
measured ~3.5x slower than the two separate ops at batch-32 sizes (643 vs 181 us for
(32, 19, 384)). On 2-D inputs torch exports each Linear as Gemm; graph_simplify turns those back
into MatMul + Add so Q/K/V merge and int8 exclusions find them by name.

Only ``attention.self`` is replaced (by :class:`PackedSelfAttention`, same child names), so ONNX
node names keep their ``/layer.{i}/attention/self/query/`` scopes and int8 exclusions, SmoothQuant
and outlier splits map onto the packed graph as onto the plain one.

``attention`` picks how each attention block exports (ORT's own fusion matches only the padded
graph, so packed.py emits the fused ops itself):

- ``"Attention"`` (default): the padded hidden states (B, T, D) go into one ``com.microsoft``
  Attention node that holds the Q/K/V weights; ORT's dynamic int8 turns it into QAttention
  (Q/K/V product, per-channel int8, and attention in one kernel). Q/K/V then run on padding
  slots too, yet on the pruned MiniLM int8 (2 threads, 10 interleaved rounds) it measured
  batch 1 0.95 vs 0.99 ms and batch 32 17.5 vs 18.3 ms against ``"MultiHeadAttention"``, with
  the same fidelity. ORT's static (QDQ) int8 leaves Attention fp32, so static int8 uses:
- ``"MultiHeadAttention"``: Q/K/V as one MatMul on the packed stream, gathered to (B, T), then
  one MultiHeadAttention node for the core (head split, Q.K^T, scale, mask, softmax, .V, head
  merge: ~11 standard ops) with the (B, T) padding mask as int32 ``key_padding_mask``. Against
  ``"onnx"`` on MiniLM int8: batch 1 1.34 vs 1.40 ms, batch 32 22.7 vs 23.4 ms.
- ``"onnx"``: standard ONNX ops only (for other runtimes).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.transformers.embed import pool


@dataclasses.dataclass
class Pack:
    """Where the real tokens of a (B, T) batch sit; passed down as the layers' attention mask."""

    idx: torch.Tensor  # (N,) flat (B*T) positions of the real tokens
    pad_idx: torch.Tensor  # (B, T) packed row read by each slot (a real token's own row)
    additive: torch.Tensor  # (B, 1, 1, T) 0 for real keys, dtype min for padding
    mask32: torch.Tensor  # (B, T) int32 1/0, MultiHeadAttention's key_padding_mask

    @staticmethod
    def of(mask: torch.Tensor, dtype: torch.dtype) -> Pack:
        flat = mask.reshape(-1)  # (B*T,)
        idx = torch.nonzero(flat).reshape(-1)  # (N,)
        pad_idx = (flat.cumsum(0) - 1).clamp(min=0).reshape_as(mask)  # (B, T): one Shape op
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return Pack(idx, pad_idx, additive, mask.to(torch.int32))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) packed -> (B, T, C), one Gather; padding slots hold a real token's row."""
        return F.embedding(self.pad_idx, x)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B*T, C) -> (N, C), the real tokens only (one Gather)."""
        return F.embedding(self.idx, x)


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additive: torch.Tensor,
    heads: int,
    scale: float,
) -> torch.Tensor:
    """(B, T, H*d) q, k, v and a (B, 1, 1, T) additive mask -> (B, T, H, d) context."""
    b, t, d = q.shape[0], q.shape[1], int(q.shape[2]) // heads  # d: a constant in the export
    q, k, v = (y.reshape(b, t, heads, d).transpose(1, 2) for y in (q, k, v))
    scores = torch.matmul(q, k.transpose(2, 3)) * scale + additive  # (B, H, T, T)
    return torch.matmul(scores.softmax(-1), v).transpose(1, 2)


class _MultiHeadAttention(torch.autograd.Function):
    """Eager: :func:`_attention`. ONNX (TorchScript exporter): one ``com.microsoft``
    MultiHeadAttention node (no bias; ``key_padding_mask`` (B, T) int32, 1 = real token)."""

    @staticmethod
    def forward(ctx, q, k, v, mask32, additive, heads: int, scale: float):  # type: ignore[override]
        return _attention(q, k, v, additive, heads, scale)

    @staticmethod
    def symbolic(g, q, k, v, mask32, additive, heads: int, scale: float):  # pragma: no cover
        none = g.op("prim::Constant")  # an omitted optional input ("" in ONNX): the bias
        none.setType(torch._C.OptionalType.ofTensor())
        out = g.op(
            "com.microsoft::MultiHeadAttention",
            q,
            k,
            v,
            none,
            mask32,
            num_heads_i=heads,
            scale_f=scale,
        )
        out.setType(q.type())
        return out


class _QKVAttention(torch.autograd.Function):
    """Eager: Q/K/V product then :func:`_attention`. ONNX: one ``com.microsoft`` Attention node
    (input (B, T, D), weights (D, 3*H*d), bias (3*H*d,), ``mask_index`` (B, T) int32)."""

    @staticmethod
    def forward(ctx, x, w, b, mask32, additive, heads: int, scale: float):  # type: ignore[override]
        q, k, v = (x @ w + b).split(w.shape[1] // 3, -1)
        return _attention(q, k, v, additive, heads, scale).flatten(2)

    @staticmethod
    def symbolic(g, x, w, b, mask32, additive, heads: int, scale: float):  # pragma: no cover
        out = g.op("com.microsoft::Attention", x, w, b, mask32, num_heads_i=heads, scale_f=scale)
        out.setType(x.type())
        return out


ATTENTION_OPS = ("Attention", "MultiHeadAttention", "onnx")


class PackedSelfAttention(nn.Module):
    """Drop-in for HF ``BertSelfAttention`` (eval, no cache) on a packed (N, D) stream;
    ``op`` is how it exports (one of :data:`ATTENTION_OPS`, module doc)."""

    def __init__(self, sa: Any, op: str = "Attention") -> None:
        super().__init__()
        if op not in ATTENTION_OPS:
            raise ValueError(f"attention op must be one of {list(ATTENTION_OPS)}, got {op!r}")
        self.query, self.key, self.value = sa.query, sa.key, sa.value
        self.num_attention_heads = int(sa.num_attention_heads)
        self.attention_head_size = int(sa.attention_head_size)
        self.scaling = float(sa.scaling)
        self.op = op

    def forward(self, hidden_states: torch.Tensor, attention_mask: Pack | None = None, **_kw):
        pack = attention_mask
        if not isinstance(pack, Pack):
            raise TypeError("PackedSelfAttention runs only inside PackedSentenceEncoder")
        h, d = self.num_attention_heads, self.attention_head_size
        exporting = torch.onnx.is_in_onnx_export()
        if exporting and self.op == "Attention":
            w = torch.cat([self.query.weight, self.key.weight, self.value.weight]).T  # (D, 3*H*d)
            b = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            x = pack.pad(hidden_states)  # (B, T, D)
            ctx = _QKVAttention.apply(x, w, b, pack.mask32, pack.additive, h, self.scaling)
            return pack.unpad(ctx.reshape(-1, h * d)), None  # (B*T, H*d) -> (N, H*d)
        # One gather for Q, K and V: graph_simplify merges the three MatMuls (one MatMul + Split)
        # and drops the Split -> Concat pair, leaving MatMul -> Gather -> Split -> attention.
        qkv = torch.cat(
            [self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)], -1
        )  # (N, 3*H*d)
        q, k, v = pack.pad(qkv).split(h * d, -1)  # 3 x (B, T, H*d)
        if exporting and self.op == "MultiHeadAttention":
            ctx = _MultiHeadAttention.apply(q, k, v, pack.mask32, pack.additive, h, self.scaling)
        else:
            ctx = _attention(q, k, v, pack.additive, h, self.scaling)
        return pack.unpad(ctx.reshape(-1, h * d)), None  # (B*T, H*d) -> (N, H*d)


class PackedSentenceEncoder(nn.Module):
    """(B, T) ids and mask -> (B, D) embeddings, equal to the SentenceEncoder it was built from,
    with every layer but attention run on the real tokens only. Inference only.
    ``attention``: how each attention block exports (module doc)."""

    def __init__(self, encoder: Any, attention: str = "Attention") -> None:
        super().__init__()
        from slimkit.transformers.loader import SUPPORTED_MODEL_TYPES

        model_type = getattr(encoder.model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise TypeError(
                f"packing supports model_type {sorted(SUPPORTED_MODEL_TYPES)}, "
                f"but got {model_type!r}; export with packed=False"
            )
        self.model = copy.deepcopy(encoder.model).eval()  # the caller's module stays as it was
        for layer in self.model.encoder.layer:
            layer.attention.self = PackedSelfAttention(layer.attention.self, attention)
        self.pooling = encoder.pooling
        self.normalize = encoder.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.model.embeddings(input_ids=input_ids)  # (B, T, D)
        pack = Pack.of(attention_mask, emb.dtype)
        h = pack.unpad(emb.reshape(-1, emb.shape[-1]))  # (N, D)
        h = self.model.encoder(h, pack).last_hidden_state
        full = pack.pad(h)  # (B, T, D)
        return pool(full, attention_mask, self.pooling, self.normalize)  # (B, D)
