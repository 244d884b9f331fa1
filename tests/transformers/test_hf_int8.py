import copy
import dataclasses

import pytest
import torch
from torch import nn

from slimkit.errors import ConfigError, TargetError
from slimkit.testing import check_contract
from slimkit.transformers import (
    EncoderInt8,
    InputScaledLinear,
    embed,
    embedding_fidelity,
    quantize_encoder,
    sensitivity_scan,
    smooth_encoder_,
    tokenize,
)


class IdsOnly(nn.Module):
    """(B, T) token ids -> (B, D) embeddings with a full attention mask (for check_contract)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, ids):
        return self.module(ids, torch.ones_like(ids))


def test_smoothing_is_exact_in_fp32(encoder, sentence_module, sentences):
    batches = [tokenize(encoder.tokenizer, sentences, 64)]
    ids = batches[0]["input_ids"]

    def smooth(m):
        done = smooth_encoder_(m.module, batches, alpha=0.5)
        assert len(done) == 18  # 6 layers x (attention output, FFN in, FFN out)
        return m

    res = check_contract(
        IdsOnly(copy.deepcopy(sentence_module)),
        smooth,
        ids,
        max_abs_diff=1e-4,
        onnx=False,  # check_contract feeds float inputs; export_encoder checks int64 parity
        roundtrip=False,
    )
    assert res.sqnr_db > 60


def test_smoothing_lowers_emulated_int8_error(encoder, sentence_module, sentences):
    batches = [tokenize(encoder.tokenizer, sentences, 64)]
    units = [f"encoder.layer.{i}.intermediate.dense" for i in range(6)]
    before = sensitivity_scan(sentence_module, batches, units=units)
    m = copy.deepcopy(sentence_module)
    smooth_encoder_(m, batches, alpha=0.7, kinds=("intermediate.dense",))
    name = "model.encoder.layer.2.intermediate.dense"
    assert isinstance(dict(m.named_modules())[name], InputScaledLinear)
    after = sensitivity_scan(m, batches, units=units)
    # int8 of the FFN input (LayerNorm outliers) costs clearly less cosine once smoothed.
    assert sum(after.values()) < 0.8 * sum(before.values())


def test_sensitivity_scan_ranks_units(encoder, sentence_module, sentences):
    batches = [tokenize(encoder.tokenizer, sentences[:4], 64)]
    units = ["encoder.layer.0.attention.self", "encoder.layer.5.output.dense"]
    sens = sensitivity_scan(sentence_module, batches, units=units)
    assert set(sens) == set(units)
    assert all(0 <= v < 0.05 for v in sens.values())


def test_int8_dynamic_fidelity_and_size(tmp_path, encoder, sentence_module, sentences):
    cfg = EncoderInt8(auto_exclude=1, scan_sentences=8, calib_sentences=8)
    path = tmp_path / "int8.onnx"
    res = quantize_encoder(
        sentence_module, encoder.tokenizer, path, cfg, sentences, num_heads=12, hidden_size=384
    )
    # the most sensitive unit: whole fp32 if an attention unit, else (outlier_channels=4 by
    # default) int8 but for its 4 largest input channels, whose one MatMul stays fp32
    assert len(res.excluded_units) + len(res.split_units) == 1 and len(res.excluded_nodes) >= 1
    assert len(res.sensitivity) == 24
    # packed + fused_attention (defaults): Q/K/V sit inside one Attention node per layer, which
    # ORT's dynamic int8 turns into QAttention
    assert res.simplified is not None and res.simplified["matmuls_merged"] == 0
    import collections

    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QAttention"] == 6 and ops["Attention"] == 0
    assert res.bytes == path.stat().st_size < 0.35 * 90_000_000  # int8 weights, fp32 was ~90 MB
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    fid = embedding_fidelity(ref, embed(path, encoder.tokenizer, sentences), k=2)
    assert fid.cosine_mean > 0.99 and fid.cosine_min > 0.98 and fid.spearman > 0.97


def test_int8_static_quantizes_activations_around_fused_attention(
    tmp_path, encoder, sentence_module, sentences
):
    import onnx

    cfg = EncoderInt8(mode="static", auto_exclude=0, calib_sentences=8)
    path = tmp_path / "static.onnx"
    quantize_encoder(sentence_module, encoder.tokenizer, path, cfg, sentences)
    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert sum(n.op_type == "MultiHeadAttention" for n in graph.node) == 6
    # every weight MatMul reads a dequantized activation (QDQ), also those after attention:
    # an untyped MultiHeadAttention output once left them fp32 (weight-only int8)
    assert len(matmuls) == 24 and all(made_by[n.input[0]] == "DequantizeLinear" for n in matmuls)
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    fid = embedding_fidelity(ref, embed(path, encoder.tokenizer, sentences), k=2)
    assert fid.cosine_mean > 0.9


def test_excluded_attention_unit_keeps_its_attention_fp32(
    tmp_path, encoder, sentence_module, sentences
):
    import onnx

    cfg = EncoderInt8(exclude=("encoder.layer.2.attention.self",), auto_exclude=0)
    path = tmp_path / "x.onnx"
    res = quantize_encoder(sentence_module, encoder.tokenizer, path, cfg, sentences[:8])
    assert res.excluded_units == ["encoder.layer.2.attention.self"]
    att = [n for n in onnx.load(str(path)).graph.node if "Attention" in n.op_type]
    assert [n.op_type for n in att] == ["QAttention"] * 2 + ["Attention"] + ["QAttention"] * 3
    assert "/layer.2/attention/self/" in att[2].name


def test_ort_quantizer_noise_is_filtered_but_float_warnings_show():
    import logging

    from slimkit.transformers.int8 import _QuantizerNoise

    def rec(msg):
        return logging.LogRecord("root", logging.WARNING, __file__, 1, msg, None, None)

    f = _QuantizerNoise()
    dump = "Inference failed or unsupported type to quantize for tensor '/NonZero_output_0', "
    assert not f.filter(rec(dump + "type is tensor_type {\n  elem_type: 7\n  shape {}"))
    assert f.filter(rec(dump + "type is tensor_type {\n  elem_type: 1\n  shape {}"))
    assert not f.filter(rec("Please consider to run pre-processing before quantization."))
    assert f.filter(rec("something else"))


def test_int8_config_errors():
    with pytest.raises(ConfigError, match=r"mode must be one of \['dynamic', 'static'\]"):
        EncoderInt8(mode="dynamc")
    with pytest.raises(ConfigError, match="alpha must be in"):
        EncoderInt8(smooth={"alpha": 1.5})
    with pytest.raises(ConfigError, match="auto_exclude"):
        EncoderInt8(auto_exclude=-1)


def test_unknown_exclude_unit(tmp_path, encoder, sentence_module, sentences):
    cfg = EncoderInt8(
        exclude=("encoder.layer.9.output.dense",), auto_exclude=0, smooth={"enabled": False}
    )
    with pytest.raises(TargetError, match="near matches"):
        quantize_encoder(sentence_module, encoder.tokenizer, tmp_path / "x.onnx", cfg, sentences)


def test_outlier_split_is_exact_in_fp32_and_only_its_matmul_stays_fp32(
    tmp_path, encoder, sentence_module, sentences
):
    import onnx

    from slimkit.config import get_module, set_module
    from slimkit.transformers.outlier_split import OutlierSplitLinear, outlier_channels

    batch = tokenize(encoder.tokenizer, sentences, 64)
    m = copy.deepcopy(sentence_module)
    smooth_encoder_(m, [batch], alpha=0.7, kinds=("output.dense",))
    ref = m(**batch)
    name = "model.encoder.layer.0.output.dense"
    lin = get_module(m, name)
    idx = outlier_channels(lin, [batch], m, 4)
    assert idx.shape == (4,)
    set_module(m, name, OutlierSplitLinear(lin, idx))
    torch.testing.assert_close(m(**batch), ref, atol=1e-5, rtol=0)

    cfg = EncoderInt8(
        exclude=("encoder.layer.0.output.dense",),
        auto_exclude=0,
        outlier_channels=4,
        scan_sentences=8,
        calib_sentences=8,
    )
    path = tmp_path / "split.onnx"
    res = quantize_encoder(
        sentence_module, encoder.tokenizer, path, cfg, sentences, num_heads=12, hidden_size=384
    )
    assert res.split_units == ["encoder.layer.0.output.dense"] and res.excluded_units == []
    assert len(res.excluded_nodes) == 1 and "/outlier/" in res.excluded_nodes[0]
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    float_matmuls = [
        n.name for n in graph.node if n.op_type == "MatMul" and any(x in weights for x in n.input)
    ]
    assert float_matmuls == res.excluded_nodes  # every other weight MatMul went int8
    with pytest.raises(ConfigError, match="outlier_channels"):
        EncoderInt8(outlier_channels=-1)


def test_token_scaled_linear_is_exact_in_fp32_also_smoothed_and_on_zero_rows():
    from slimkit.transformers.token_scale import TokenScaledLinear

    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    x = torch.randn(5, 16) * torch.tensor([30.0, 1, 1, 1, 0.01])[:, None]  # (N, in), one big row
    x[2] = 0.0  # an all-zero row must stay finite: bias only
    ref = lin(x)
    torch.testing.assert_close(TokenScaledLinear(lin)(x), ref, atol=1e-5, rtol=1e-6)
    assert torch.isfinite(TokenScaledLinear(lin)(x)).all()
    smoothed = InputScaledLinear(copy.deepcopy(lin), torch.rand(16) + 0.5)
    torch.testing.assert_close(TokenScaledLinear(smoothed)(x), ref, atol=1e-5, rtol=1e-6)
    # what the MatMul sees: every non-zero row's largest |value| is 1, whatever its size
    seen = {}
    tsl = TokenScaledLinear(lin)
    real_linear = torch.nn.functional.linear

    def spy(a, w, b=None):
        seen["a"] = a
        return real_linear(a, w, b)

    torch.nn.functional.linear = spy
    try:
        tsl(x)
    finally:
        torch.nn.functional.linear = real_linear
    row_max = seen["a"].abs().amax(-1)
    torch.testing.assert_close(row_max[[0, 1, 3, 4]], torch.ones(4))
    assert row_max[2] == 0


def test_per_token_ffn_ranges_raise_int8_fidelity_on_an_outlier_token(
    tmp_path, encoder, sentence_module, sentences
):
    """MiniLM's [CLS] sets the per-tensor int8 range of every FFN input (2-4x any other token
    in layers 0-3); per-token ranges give the other tokens their own step."""
    import collections

    import onnx

    base = EncoderInt8(auto_exclude=0, scan_sentences=8, calib_sentences=8, per_token_share=1.0)
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    fid = {}
    for per_token in (False, True):
        path = tmp_path / f"tok{per_token}.onnx"
        res = quantize_encoder(
            sentence_module,
            encoder.tokenizer,
            path,
            dataclasses.replace(base, per_token=per_token),
            sentences,
        )
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        fid[per_token] = embedding_fidelity(ref, embed(path, encoder.tokenizer, sentences), k=2)
        if per_token:
            assert len(res.token_scaled_units) == 12  # FFN in + out of 6 layers
            assert ops["ReduceMax"] == 12
        else:
            assert res.token_scaled_units == [] and ops["ReduceMax"] == 0
        # per-token or not, every FFN weight MatMul went int8 (ORT names it ..._quant)
        graph = onnx.load(str(path), load_external_data=False).graph
        weights = {i.name for i in graph.initializer}
        assert not [
            n.name
            for n in graph.node
            if n.op_type == "MatMul" and any(x in weights for x in n.input)
        ]
    # measured on these 8 short sentences: 1 - mean cosine 0.00277 -> 0.00209 (-24 %)
    assert 1 - fid[True].cosine_mean < 0.9 * (1 - fid[False].cosine_mean)


def test_per_token_skips_split_and_excluded_units(tmp_path, encoder, sentence_module, sentences):
    cfg = EncoderInt8(
        exclude=("encoder.layer.0.output.dense", "encoder.layer.1.intermediate.dense"),
        auto_exclude=0,
        outlier_channels=4,
        per_token=True,
        per_token_share=1.0,
        scan_sentences=8,
        calib_sentences=8,
    )
    res = quantize_encoder(sentence_module, encoder.tokenizer, tmp_path / "m.onnx", cfg, sentences)
    assert res.split_units == [
        "encoder.layer.0.output.dense",
        "encoder.layer.1.intermediate.dense",
    ]
    assert len(res.token_scaled_units) == 10
    assert not set(res.token_scaled_units) & set(res.split_units)


def test_per_token_units_choose_which_ffn_units(tmp_path, encoder, sentence_module, sentences):
    cfg = EncoderInt8(
        auto_exclude=0,
        per_token=True,
        per_token_units=(r"re:encoder\.layer\.[0-1]\.(intermediate|output)\.dense",),
        scan_sentences=8,
        calib_sentences=8,
    )
    res = quantize_encoder(sentence_module, encoder.tokenizer, tmp_path / "m.onnx", cfg, sentences)
    # named units are all wrapped (per_token_share chooses among the default, every FFN unit)
    assert res.per_token_gain == {}
    assert res.token_scaled_units == [
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
        "encoder.layer.1.intermediate.dense",
        "encoder.layer.1.output.dense",
    ]
    with pytest.raises(ConfigError, match="must name FFN units"):
        quantize_encoder(
            sentence_module,
            encoder.tokenizer,
            tmp_path / "bad.onnx",
            dataclasses.replace(cfg, per_token_units=("encoder.layer.0.attention.output.dense",)),
            sentences,
        )
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(ConfigError, match="per_token: true"):
        EncoderInt8(per_token_units=("encoder.layer.0.output.dense",))


def test_fewest_with_share_takes_the_largest_gains_first():
    from slimkit.transformers.int8 import fewest_with_share

    gain = {"a": 0.1, "b": 0.5, "c": 0.3, "d": 0.1}
    assert fewest_with_share(gain, 0.5) == ["b"]
    assert fewest_with_share(gain, 0.8) == ["b", "c"]  # in gain's order, not by size
    assert fewest_with_share(gain, 0.85) == ["a", "b", "c"]  # a tie goes to the earlier key
    assert fewest_with_share(gain, 1.0) == ["a", "b", "c", "d"]
    assert fewest_with_share({"a": 0.0, "b": 0.0}, 0.8) == []  # no gain: none
    assert fewest_with_share({}, 0.8) == []


def test_per_token_share_chooses_again_when_a_chosen_unit_is_kept_fp32(
    tmp_path, monkeypatch, encoder, sentence_module, sentences
):
    """auto_exclude runs after the choice; a chosen unit it keeps fp32 (split) is replaced
    from the rest, so the wrapped units still give the share of what is left."""
    from slimkit.transformers import int8

    ffn = [u for u in int8.unit_names(sentence_module) if int8._is_ffn_unit(u)]
    l0, l1, l2, l3 = (f"encoder.layer.{i}.output.dense" for i in range(4))
    gains = {u: 0.0 for u in ffn} | {l0: 0.5, l1: 0.3, l2: 0.15, l3: 0.05}
    monkeypatch.setattr(int8, "per_token_gains", lambda *a, **k: dict(gains))
    monkeypatch.setattr(
        int8,
        "sensitivity_scan",
        lambda module, *a, **k: {u: float(u == l0) for u in int8.unit_names(module)},
    )
    cfg = EncoderInt8(auto_exclude=1, per_token=True, scan_sentences=8, calib_sentences=8)
    res = quantize_encoder(sentence_module, encoder.tokenizer, tmp_path / "m.onnx", cfg, sentences)
    assert res.split_units == [l0]  # the most "sensitive" unit, chosen first for per-token
    # 80 % of the 0.5 left: l1 (0.3) + l2 (0.15), not l0
    assert res.token_scaled_units == [l1, l2]


def test_per_token_share_wraps_the_fewest_units_that_gain_most(
    tmp_path, encoder, sentence_module, sentences
):
    """per_token_share < 1: only the units with the largest emulated per-token gain, until their
    gains reach that share of the total; on MiniLM those are FFN outputs (the wide input after
    GELU), and the chosen few keep most of the fidelity per-token ranges give."""
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    base = EncoderInt8(auto_exclude=0, scan_sentences=8, calib_sentences=8)
    assert base.per_token_share == 0.8
    res = quantize_encoder(
        sentence_module,
        encoder.tokenizer,
        tmp_path / "share.onnx",
        dataclasses.replace(base, per_token=True),
        sentences,
    )
    gain, chosen = res.per_token_gain, res.token_scaled_units
    assert len(gain) == 12 and 0 < len(chosen) < 12
    total = sum(gain.values())
    assert sum(gain[u] for u in chosen) >= 0.8 * total  # enough of the gain ...
    assert sum(gain[u] for u in chosen) - min(gain[u] for u in chosen) < 0.8 * total  # ... fewest
    assert min(gain[u] for u in chosen) >= max(g for u, g in gain.items() if u not in chosen)
    assert all(u.endswith(".output.dense") and "attention" not in u for u in chosen)
    # in ONNX Runtime, the few keep most of what wrapping all 12 gains over per-tensor ranges
    # (measured on these 8 sentences, 1 - mean cosine: none 0.00277, 4 units 0.00219, all 0.00209)
    quantize_encoder(sentence_module, encoder.tokenizer, tmp_path / "none.onnx", base, sentences)
    quantize_encoder(
        sentence_module,
        encoder.tokenizer,
        tmp_path / "all.onnx",
        dataclasses.replace(base, per_token=True, per_token_share=1.0),
        sentences,
    )
    err = {
        name: 1
        - embedding_fidelity(ref, embed(tmp_path / name, encoder.tokenizer, sentences)).cosine_mean
        for name in ("share.onnx", "none.onnx", "all.onnx")
    }
    assert err["share.onnx"] < err["none.onnx"] - 0.6 * (err["none.onnx"] - err["all.onnx"]), err
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="per_token_share"):
            EncoderInt8(per_token=True, per_token_share=bad)
