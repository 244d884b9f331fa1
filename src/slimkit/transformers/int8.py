"""Int8 deployment of a sentence encoder with ONNX Runtime's quantizer.

Steps (each optional, all measured):
1. SmoothQuant migration in PyTorch (``smooth.py``), before export.
2. Export (``onnx_export.py``), padding-free (``packed.py``: every layer but attention on the
   real tokens only) and simplified (``graph_simplify.py``: constant head reshapes, Q/K/V as one
   MatMul), or, optionally, padded with ORT's offline transformer fusion.
3. Sensitivity scan: every quantizable unit of every layer (Q/K/V together, attention output,
   FFN in, FFN out) is quantized alone, emulating ORT's int8 arithmetic in PyTorch (per-channel
   symmetric int8 weights, per-tensor asymmetric uint8 activations with the range taken from
   the batch) and the embedding cosine loss against fp32 is measured on real sentences; the
   ``auto_exclude`` worst units stay fp32.
4. ``onnxruntime.quantization``: ``quantize_dynamic`` (QOperator, MatMulInteger/QAttention) or
   ``quantize_static`` (QDQ, calibrated on sentences), per-channel weights, exclusions mapped
   from layer names to ONNX node names.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from slimkit import atomic
from slimkit.config import SlimConfig, check_int, check_range, get_module, parse_enum, set_module
from slimkit.errors import ConfigError, TargetError
from slimkit.registry import Registry
from slimkit.transformers.smooth import SMOOTHABLE, smooth_encoder_
from slimkit.transformers.token_scale import TokenScaledLinear, row_scaled_linear

REGISTRY = Registry("transformer int8")

UNITS = ("attention.self", "attention.output.dense", "intermediate.dense", "output.dense")
_UNIT_LINEARS = {
    "attention.self": ("attention.self.query", "attention.self.key", "attention.self.value")
}


class QuantMode(str, enum.Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"


@dataclasses.dataclass(frozen=True)
class SmoothConfig(SlimConfig):
    """SmoothQuant migration strength ``alpha`` (0 = off is ``enabled=False``) and layer kinds."""

    enabled: bool = True
    # Measured on MiniLM (emulated int8, 96 corpus sentences, mean cosine to fp32): none 0.9937;
    # FFN in alpha 0.5 -> 0.9956; FFN out alpha 0.3 -> 0.895 (!), 0.7 -> 0.9950; both at 0.7 ->
    # 0.9969; attention output 0.9935-0.9937 (no gain). Hence FFN in + out at alpha 0.7.
    alpha: float = 0.7
    kinds: tuple[str, ...] = ("intermediate.dense", "output.dense")

    def validate(self) -> None:
        check_range("smooth.alpha", self.alpha, 0.0, 1.0)
        bad = [k for k in self.kinds if k not in SMOOTHABLE]
        if bad:
            raise ConfigError(f"smooth.kinds must be among {list(SMOOTHABLE)}, but got {bad}")


@dataclasses.dataclass(frozen=True)
class EncoderInt8(SlimConfig):
    """Int8 ONNX deployment of a BERT-family sentence encoder.

    ``exclude``: units kept fp32, by name (``encoder.layer.5.output.dense``) or ``re:`` regex
    over unit names; ``auto_exclude``: how many more of the most sensitive units the measured
    scan keeps fp32; ``scan_sentences``/``calib_sentences``: corpus sentences used.
    """

    mode: QuantMode = QuantMode.DYNAMIC
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    auto_exclude: int = 2
    smooth: SmoothConfig = SmoothConfig()
    scan_sentences: int = 64
    calib_sentences: int = 128
    # ORT's offline transformer fusion before quantizing (Attention -> QAttention). Off by default:
    # on MiniLM at 2 threads the fused int8 graph measured slower at batch 32 (92-97 ms vs 74-76 ms
    # for the plain export, whose MatMuls ORT fuses at load time into DynamicQuantizeMatMul) and
    # no faster at batch 1; see benchmarks/minilm.py (slimkit_int8 vs slimkit_int8_fused).
    optimize: bool = False
    # graph_simplify before quantizing the plain export (ignored with optimize=True): constant
    # head-split/merge Reshapes, one (B, 1, 1, T) padding mask, Q/K/V as one MatMul + Split.
    simplify: bool = True
    # > 0: a kept-fp32 FFN unit (intermediate.dense / output.dense) keeps only its this many
    # largest-input channels in fp32 and the rest goes int8 (outlier_split.py); 0 = whole unit.
    # On MiniLM at 4: held-out Spearman 0.9953 vs 0.9955 for the whole unit fp32, without that
    # unit's fp32 MatMul (~3.5 of ~30 ms at batch 32, ORT profile).
    outlier_channels: int = 4
    # Padding-free graph (packed.py): every layer but attention runs on the real tokens only.
    # Needs simplify=True and optimize=False. On MiniLM int8 at 2 threads (15 interleaved rounds):
    # batch 32 26.8 vs 31.8 ms (75 % real tokens), batch 1 1.57 vs 1.68 ms (its 2-D token stream
    # also keeps ORT from fusing residual Add + LayerNorm into SkipLayerNormalization, which on
    # ORT 1.32's CPU is ~3.5x slower than the two ops at batch-32 sizes).
    packed: bool = True
    # Packed graph only: each attention block as ORT's fused kernels (packed.py): dynamic int8
    # exports com.microsoft Attention (Q/K/V inside; ORT makes it QAttention), static int8
    # MultiHeadAttention (ORT's QDQ int8 keeps Attention fp32); false = standard ONNX ops only.
    fused_attention: bool = True
    # Per-token int8 ranges for the FFN units (token_scale.py): each token is divided by its own
    # absolute maximum before its int8 MatMul and multiplied back after, so MiniLM's [CLS] token
    # (2-4x larger than any other in layers 0-3) no longer sets every token's int8 step. Units
    # kept fp32 or split are left as they are; per_token_share picks which are worth it. On
    # MiniLM (all 12 FFN units): held-out Spearman 0.9955 -> 0.9972, at ~5 more small ops per
    # unit (batch 1 +20 %, batch 32 +7 % at 2 threads). With static int8 the calibrated range
    # of x / r is simply [-1, 1]: 0.9245 -> 0.9895 (auto_exclude 0). The sensitivity scan
    # (auto_exclude) ranks a per-token unit by its per-token error, as it will run.
    per_token: bool = False
    # With per_token: only these units (names or ``re:`` regex, as ``exclude``); () = every FFN
    # unit. On MiniLM, layers 0-3 (where [CLS] dominates) give the fidelity of all 12 units at
    # 2/3 of the extra ops: held-out Spearman 0.9971 vs 0.9972 (none 0.9950), batch 1 1.13 vs
    # 1.23 ms (none 0.99), batch 32 22.3 vs 23.4 ms (none 21.2); on a 30 %-FFN-pruned student
    # 0.9780 for both (none 0.9753).
    per_token_units: tuple[str, ...] = ()
    # With per_token and no per_token_units (named units are all wrapped): < 1 wraps only the
    # fewest FFN units that give this share of the emulated per-token gain (a unit's int8 error,
    # 1 - mean cosine with only it int8, per tensor minus per token; largest gains first; chosen
    # again from the rest if auto_exclude then keeps a chosen unit fp32); 1 = all of them. On
    # MiniLM the gain sits in the FFN outputs of layers 0-4 (39, 19, 18, 9, 6 % of it; each FFN
    # input < 2 %): at 0.8 the 4 of layers 0-3 (85 %) gave held-out Spearman 0.9967 (all 12:
    # 0.9969, none 0.9940; no fp32 unit), on a 20 %-FFN-pruned student 0.9839 (all 12: 0.9840,
    # none 0.9818). Those wide FFN-output inputs are the dearest units to wrap, so the batch-1
    # cost falls less than the count.
    per_token_share: float = 0.8

    @property
    def attention_op(self) -> str:
        if not self.fused_attention:
            return "onnx"
        return "Attention" if self.mode is QuantMode.DYNAMIC else "MultiHeadAttention"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_enum(QuantMode, self.mode, "mode"))
        if isinstance(self.smooth, dict):
            object.__setattr__(self, "smooth", SmoothConfig.from_dict(self.smooth))
        super().__post_init__()

    def validate(self) -> None:
        from slimkit.config import _check_patterns

        if not isinstance(self.smooth, SmoothConfig):
            raise ConfigError(
                f"smooth must be a SmoothConfig or a mapping such as {{'enabled': true, "
                f"'alpha': 0.7}}, but got {self.smooth!r}"
            )
        _check_patterns(self.exclude, "exclude")
        _check_patterns(self.per_token_units, "per_token_units")
        check_int("auto_exclude", self.auto_exclude, 0, 96)
        check_int("outlier_channels", self.outlier_channels, 0, 4096)
        check_int("scan_sentences", self.scan_sentences, 2, 100_000)
        check_int("calib_sentences", self.calib_sentences, 1, 100_000)
        check_range("per_token_share", self.per_token_share, 0.0, 1.0, low_open=True)
        if self.per_token_units and not self.per_token:
            raise ConfigError(
                f"per_token_units {list(self.per_token_units)} has no effect with per_token: "
                f"false; set per_token: true, or drop per_token_units"
            )
        if self.packed and (self.optimize or not self.simplify):
            raise ConfigError(
                f"packed: true needs simplify: true and optimize: false (ORT's attention fusion "
                f"matches the padded graph only), but got simplify: {self.simplify}, optimize: "
                f"{self.optimize}; set packed: false to use optimize: true"
            )


@dataclasses.dataclass(frozen=True)
class Int8Result:
    path: str
    bytes: int
    excluded_units: list[str]
    excluded_nodes: list[str]
    sensitivity: dict[str, float]  # unit -> 1 - mean cosine when only it is int8 (emulated)
    smoothed: list[str]
    fused_ops: dict[str, int]
    simplified: dict | None = None  # graph_simplify.SimplifyResult of the fp32 graph
    split_units: list[str] = dataclasses.field(default_factory=list)  # int8 but outlier channels
    token_scaled_units: list[str] = dataclasses.field(default_factory=list)  # per-token ranges
    # per_token_share < 1: each candidate FFN unit's emulated per-token gain (how units were chosen)
    per_token_gain: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- emulation of ORT int8 arithmetic, for the sensitivity scan --------------------------------


def fake_quant_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 weight, per output channel or per tensor: (out, in) -> (out, in)."""
    amax = w.abs().amax(1, keepdim=True) if per_channel else w.abs().amax()
    scale = amax.clamp(min=1e-12) / 127.0
    return (w / scale).round().clamp(-127, 127) * scale


def fake_quant_act(x: torch.Tensor) -> torch.Tensor:
    """ORT DynamicQuantizeLinear: uint8, per tensor, range [min(x, 0), max(x, 0)]."""
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = ((hi - lo) / 255.0).clamp(min=1e-12)
    zp = (-lo / scale).round()
    return ((x / scale).round() + zp).clamp(0, 255).sub(zp) * scale


class _FakeQuantLinear(nn.Module):
    """A Linear as ORT's dynamic int8 computes it; ``per_token``: as a TokenScaledLinear does
    (each row divided by its absmax before the per-tensor int8 input, multiplied back after)."""

    def __init__(self, lin: Any, per_channel: bool, per_token: bool = False) -> None:
        super().__init__()
        inner = lin.linear if hasattr(lin, "linear") else lin  # InputScaledLinear wraps one
        self.pre: torch.Tensor | None = getattr(lin, "inv_scale", None)
        self.weight: torch.Tensor = fake_quant_weight(inner.weight.detach(), per_channel)
        self.bias: torch.Tensor | None = inner.bias
        self.per_token = per_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = x * self.pre
        if not self.per_token:
            return nn.functional.linear(fake_quant_act(x), self.weight, self.bias)
        return row_scaled_linear(x, self.weight, self.bias, fake_quant_act)


def check_auto_exclude(cfg: EncoderInt8, num_layers: int) -> None:
    """``auto_exclude`` must leave some unit int8. With ``outlier_channels`` the chosen FFN
    units still run int8 but for a few channels, so only ``outlier_channels=0`` can leave
    nothing int8."""
    units = [f"encoder.layer.{i}.{u}" for i in range(num_layers) for u in UNITS]
    free = len(units) - len(_match_units(cfg.exclude, units))
    if cfg.auto_exclude and not cfg.outlier_channels and cfg.auto_exclude >= free:
        raise ConfigError(
            f"auto_exclude must leave some unit int8: the model has {len(units)} units, "
            f"{len(units) - free} excluded by name, but got auto_exclude={cfg.auto_exclude}; "
            f"pass at most {max(free - 1, 0)}"
        )


def unit_names(module: Any) -> list[str]:
    """Quantizable units of a SentenceEncoder: ``encoder.layer.{i}.{attention.self, ...}``."""
    return [f"encoder.layer.{i}.{u}" for i in range(len(module.model.encoder.layer)) for u in UNITS]


def _unit_linears(unit: str) -> list[str]:
    layer, _, kind = unit.partition(".")[2].partition(".")[2].partition(".")  # "i", kind
    base = f"model.encoder.layer.{layer}."
    return [base + k for k in _UNIT_LINEARS.get(kind, (kind,))]


@torch.no_grad()
def sensitivity_scan(
    module: Any,
    batches: list[dict],
    per_channel: bool = True,
    units: Sequence[str] | None = None,
    per_token_units: Collection[str] = (),
) -> dict[str, float]:
    """``{unit: 1 - mean cosine}`` of embeddings with only ``unit`` int8-emulated, vs fp32;
    units in ``per_token_units`` are emulated with per-token ranges (``EncoderInt8.per_token``),
    as they will be quantized."""
    from slimkit.transformers.embed import check_sentence_encoder
    from slimkit.transformers.smooth import check_batches

    check_sentence_encoder(module)
    batches = check_batches(batches)
    module = module.eval()
    ref = torch.cat([module(b["input_ids"], b["attention_mask"]) for b in batches])
    out: dict[str, float] = {}
    for unit in units or unit_names(module):
        names = _unit_linears(unit)
        originals = [get_module(module, n) for n in names]
        try:
            for n, m in zip(names, originals):
                set_module(module, n, _FakeQuantLinear(m, per_channel, unit in per_token_units))
            emb = torch.cat([module(b["input_ids"], b["attention_mask"]) for b in batches])
        finally:
            for n, m in zip(names, originals):
                set_module(module, n, m)
        cos = nn.functional.cosine_similarity(ref, emb, dim=1)
        out[unit] = float(1.0 - cos.mean())
    return out


def per_token_gains(
    module: Any, batches: list[dict], units: Sequence[str], per_channel: bool
) -> dict[str, float]:
    """``{unit: gain}``: each unit's emulated int8 error (1 - mean cosine, only it int8) with a
    per-tensor input range minus that with per-token ranges, floored at 0."""
    plain = sensitivity_scan(module, batches, per_channel, units)
    token = sensitivity_scan(module, batches, per_channel, units, per_token_units=units)
    return {u: max(plain[u] - token[u], 0.0) for u in units}


def fewest_with_share(gain: dict[str, float], share: float) -> list[str]:
    """The fewest keys of ``gain`` whose values add up to ``share`` of their sum, taken largest
    first and returned in ``gain``'s order; none when the sum is 0."""
    total, acc, chosen = sum(gain.values()), 0.0, set()
    for u in sorted(gain, key=gain.__getitem__, reverse=True):
        if total <= 0.0 or acc >= share * total:
            break
        chosen.add(u)
        acc += gain[u]
    return [u for u in gain if u in chosen]


# ---- unit names -> ONNX node names -------------------------------------------------------------


def onnx_nodes_for_units(model: onnx.ModelProto, units: Sequence[str]) -> list[str]:
    """Map units to the ONNX nodes ORT quantizes (MatMul, or the fused Attention for Q/K/V;
    after ``graph_simplify`` Q/K/V is one ``query_key_value`` MatMul)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    attentions = [n for n in model.graph.node if n.op_type == "Attention"]
    names: list[str] = []
    for unit in units:
        layer, kind = unit.split(".")[2], unit.split(".", 3)[3]
        if kind == "attention.self":
            # packed.py's Attention (Q/K/V inside) is named in the layer's own scope.
            own = [n.name for n in attentions if f"/layer.{layer}/attention/self/" in n.name]
            if own:
                names.extend(own)
                continue
            # ORT's fused Attention produces the input of this layer's attention-output MatMul.
            key = f"/layer.{layer}/attention/output/dense/"
            out_mm = [n for n in matmuls if key in n.name]
            att = producers.get(out_mm[0].input[0]) if out_mm else None
            if att is not None and att.op_type == "Attention":
                names.append(att.name)
                continue
            hits = [
                n.name
                for n in matmuls
                if any(
                    f"/layer.{layer}/attention/self/{q}/" in n.name
                    for q in ("query", "key", "value", "query_key_value")
                )
            ]
        else:
            key = f"/layer.{layer}/{kind.replace('.', '/')}/"
            hits = [n.name for n in matmuls if key in n.name]
        if not hits:
            raise TargetError(f"unit {unit!r} has no ONNX node in the exported graph")
        names.extend(hits)
    return names


def _is_ffn_unit(unit: str) -> bool:
    """FFN in or out projection (not the attention output projection)."""
    return unit.endswith(("intermediate.dense", ".output.dense")) and not unit.endswith(
        "attention.output.dense"
    )


def _match_units(patterns: Sequence[str], units: Sequence[str]) -> list[str]:
    from slimkit.config import _matches, no_match_message

    chosen = []
    for p in patterns:
        hits = [u for u in units if _matches(u, p)]
        if not hits:
            raise TargetError(no_match_message(p, list(units)))
        chosen += [u for u in hits if u not in chosen]
    return chosen


# ---- the handler -------------------------------------------------------------------------------


def _batches(
    tokenizer: Any, sentences: Sequence[str], max_length: int, size: int = 32
) -> list[dict]:
    from slimkit.transformers.embed import tokenize

    return [
        tokenize(tokenizer, sentences[i : i + size], max_length)
        for i in range(0, len(sentences), size)
    ]


class _QuantizerNoise(logging.Filter):
    """ORT's quantizer logs on the root logger (1) "Please consider to run pre-processing before
    quantization" for every model: slimkit exports its own graph, so the advice is noise; (2)
    "Inference failed or unsupported type to quantize" with a whole ONNX type dump for every
    int64 tensor that reaches an op it would quantize (the packed graph's NonZero index into a
    Transpose): int64 tensors are never quantized, so that is noise too. Float ones still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "unsupported type to quantize" in msg and "elem_type: 7\n" in msg:  # INT64
            return False
        return "pre-processing before quantization" not in msg


def _ort_quantize(
    src: str, dst: str, cfg: EncoderInt8, nodes_to_exclude: list[str], calib: list[dict]
) -> None:
    quiet = _QuantizerNoise()
    logging.getLogger().addFilter(quiet)
    try:
        _ort_quantize_inner(src, dst, cfg, nodes_to_exclude, calib)
    finally:
        logging.getLogger().removeFilter(quiet)


def _ort_quantize_inner(
    src: str, dst: str, cfg: EncoderInt8, nodes_to_exclude: list[str], calib: list[dict]
) -> None:
    from onnxruntime import quantization as q

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if cfg.mode is QuantMode.DYNAMIC:
        q.quantize_dynamic(
            src,
            dst,
            per_channel=cfg.per_channel,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude,
            extra_options=extra,
        )
        return

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{k: v.numpy() for k, v in b.items()} for b in calib])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(
        src,
        dst,
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        per_channel=cfg.per_channel,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=nodes_to_exclude,
        extra_options=extra,
    )


def check_calibration_sentences(sentences: Any) -> list[str]:
    """At least 2 sentences (a list of strings) for the scan and calibration."""
    from slimkit.transformers.embed import _sentence_list

    # A short list is reported by its count (an empty one too), anything else checked first.
    if not isinstance(sentences, (list, tuple)) or len(sentences) >= 2:
        sentences = _sentence_list(sentences, one_string_ok=False)
    if len(sentences) < 2:
        raise ConfigError(
            f"int8 needs at least 2 sentences for scan/calibration, but got {len(sentences)}"
        )
    return sentences


@REGISTRY.register(EncoderInt8)
def quantize_encoder(
    module: Any,
    tokenizer: Any,
    path: str | os.PathLike[str],
    cfg: EncoderInt8,
    sentences: Sequence[str],
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
    max_length: int = 256,
    log: Callable[[str], None] = lambda _m: None,
) -> Int8Result:
    """Write an int8 ONNX model of ``module`` (a SentenceEncoder, left untouched) to ``path``."""
    from slimkit.transformers.onnx_export import check_export_args, export_encoder

    sentences = check_calibration_sentences(sentences)
    if not isinstance(cfg, EncoderInt8):
        raise ConfigError(
            f"cfg must be an EncoderInt8, but got {type(cfg).__name__}: {cfg!r:.80}; "
            "write EncoderInt8(...) or EncoderInt8.from_dict({...})"
        )
    check_export_args(path, num_heads, hidden_size, max_length, module)  # before the slow work
    check_auto_exclude(cfg, len(module.model.encoder.layer))
    work = copy.deepcopy(module).eval()
    scan = _batches(tokenizer, sentences[: cfg.scan_sentences], max_length)
    calib = _batches(tokenizer, sentences[: cfg.calib_sentences], max_length)
    smoothed: list[str] = []
    if cfg.smooth.enabled:
        smoothed = smooth_encoder_(work, calib, cfg.smooth.alpha, cfg.smooth.kinds)
        log(f"smoothed {len(smoothed)} layers (alpha={cfg.smooth.alpha})")
    units = unit_names(work)
    excluded = _match_units(cfg.exclude, units)
    # Checked before the sensitivity scan, so a bad pattern fails before the slow work.
    per_token_units = _match_units(cfg.per_token_units, units) if cfg.per_token_units else units
    not_ffn = [u for u in per_token_units if not _is_ffn_unit(u)] if cfg.per_token_units else []
    if not_ffn:
        raise ConfigError(
            f"per_token_units must name FFN units (intermediate.dense, output.dense), but "
            f"{not_ffn[:3]} {'is' if len(not_ffn) == 1 else 'are'} not; narrow the pattern, "
            r"e.g. 're:encoder\.layer\.[0-3]\.(intermediate|output)\.dense'"
        )
    tok: list[str] = []  # FFN units to get per-token ranges (unless kept fp32 or split below)
    token_gain: dict[str, float] = {}
    if cfg.per_token:
        tok = [u for u in per_token_units if _is_ffn_unit(u) and u not in excluded]
        if cfg.per_token_share < 1.0 and not cfg.per_token_units and tok:
            token_gain = per_token_gains(work, scan, tok, cfg.per_channel)
            tok = fewest_with_share(token_gain, cfg.per_token_share)
    sens: dict[str, float] = {}
    if cfg.auto_exclude:
        # Ranked as each unit will run: per-token FFN units by their per-token error.
        sens = sensitivity_scan(work, scan, cfg.per_channel, per_token_units=tok)
        ranked = [u for u in sorted(sens, key=sens.__getitem__, reverse=True) if u not in excluded]
        excluded += ranked[: cfg.auto_exclude]
        log(f"most sensitive units kept fp32: {excluded}")
    split: list[str] = []
    if cfg.outlier_channels:
        from slimkit.transformers.outlier_split import OutlierSplitLinear, outlier_channels

        for unit in [u for u in excluded if _is_ffn_unit(u)]:
            name = _unit_linears(unit)[0]
            lin = get_module(work, name)
            idx = outlier_channels(lin, calib, work, cfg.outlier_channels)
            set_module(work, name, OutlierSplitLinear(lin, idx))
            split.append(unit)
        excluded = [u for u in excluded if u not in split]
        log(f"units int8 except their {cfg.outlier_channels} outlier input channels: {split}")
    token_scaled: list[str] = []
    if cfg.per_token:
        if token_gain:  # a chosen unit now kept fp32 or split: choose again from the rest
            left = {u: g for u, g in token_gain.items() if u not in excluded and u not in split}
            tok = fewest_with_share(left, cfg.per_token_share)
            got = sum(left[u] for u in tok) / max(sum(token_gain.values()), 1e-30)
            log(f"per-token ranges where they gain most ({got:.0%} of the emulated gain): {tok}")
        for unit in tok:
            if unit not in excluded and unit not in split:
                name = _unit_linears(unit)[0]
                set_module(work, name, TokenScaledLinear(get_module(work, name)))
                token_scaled.append(unit)
        log(f"per-token int8 ranges for {len(token_scaled)} FFN units")
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        exp = export_encoder(
            work,
            tokenizer,
            fp32,
            optimize=cfg.optimize,
            simplify=cfg.simplify,
            packed=cfg.packed,
            attention=cfg.attention_op,
            num_heads=num_heads,
            hidden_size=hidden_size,
            atol=1e-3,
            max_length=max_length,
        )
        graph = onnx.load(str(fp32), load_external_data=False)
        nodes = onnx_nodes_for_units(graph, excluded)
        nodes += [
            n.name for n in graph.graph.node if n.op_type == "MatMul" and "/outlier/" in n.name
        ]
        with atomic.atomic_path(path) as out:
            _ort_quantize(str(fp32), str(out), cfg, nodes, calib)
    return Int8Result(
        os.fspath(path),
        Path(path).stat().st_size,
        excluded,
        nodes,
        sens,
        smoothed,
        exp.fused_ops,
        exp.simplified,
        split,
        token_scaled,
        token_gain,
    )
