"""report.html of an hf_compress run, rendered from hand-made metrics (no model run)."""

import base64
import re

from slimkit.pipeline.hf_stage import _report_html
from slimkit.report import plots


def fidelity(cos_mean, cos_min, spearman, topk):
    return {
        "cosine_mean": cos_mean,
        "cosine_min": cos_min,
        "spearman": spearman,
        "topk_agreement": topk,
        "top1_agreement": 1.0,
        "k": 5,
        "n": 354,
    }


MEASURED = {
    "ort_fp32": {
        "bytes": 90_400_000,
        "latency_ms_b1": 5.0,
        "latency_ms_b32": 80.0,
        "fidelity": fidelity(1.0, 1.0, 1.0, 1.0),
    },
    "slimkit": {
        "bytes": 18_080_000,
        "latency_ms_b1": 2.0,
        "latency_ms_b32": 25.0,
        "fidelity": fidelity(0.98765, 0.91234, 0.97531, 0.9),
    },
}

ENC = {
    "model": "/models/all-MiniLM-L6-v2",
    "sentences": 354,
    "fp32_export": {"bytes": 90_400_000, "max_abs_diff": 2.4e-6},
    "structural": {
        "config": {"ffn_fraction": 0.6},
        "kept_layers": [0, 1, 2, 4],
        "heads_kept": {"encoder.layer.0": [0, 1, 2], "encoder.layer.1": [0, 5]},
        "ffn_kept": {
            "encoder.layer.0": 640,
            "encoder.layer.1": 608,
            "encoder.layer.2": 576,
            "encoder.layer.3": 512,
        },
        "head_scores": {f"encoder.layer.{i}": [0.1] * 12 for i in range(4)},
        "params_before": 22_713_216,
        "params_after": 17_988_480,
        "distill_loss_first": 0.1730,
        "distill_loss_last": 0.1284,
        "distill_best_step": 450,
        "distill_val_spearman": {"0": 0.9162, "450": 0.9355, "600": 0.9353},  # JSON keys
    },
    "int8": {
        "config": {"mode": "dynamic", "per_channel": True, "outlier_channels": 4, "packed": True},
        "excluded_units": ["encoder.layer.0.output.dense"],
        "split_units": ["encoder.layer.1.output.dense"],
        "smoothed": ["a", "b"],
        "simplified": {"nodes_before": 579, "nodes_after": 260},
    },
    "measured": MEASURED,
}


def cells(page, table_id):
    """The table's rows as lists of cell texts (tags stripped)."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert table is not None
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
        for r in rows
    ]


def decoded_pngs(page):
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_variants_table_has_sizes_ratios_speedups_and_fidelity():
    page = _report_html("minilm", MEASURED, ENC)
    head, fp32, slim = cells(page, "variants")
    assert head == [
        "variant",
        "MB on disk",
        "x smaller",
        "b1 ms",
        "b1 speed-up",
        "b32 ms",
        "b32 speed-up",
        "cosine mean",
        "cosine min",
        "Spearman",
        "top-5",
    ]
    assert fp32 == ["ort_fp32 (reference)", "90.40", "1.00x", "5.00", "1.00x", "80.00", "1.00x"] + [
        "1.0000",
        "1.0000",
        "1.0000",
        "1.000",
    ]
    assert slim == ["slimkit", "18.08", "5.00x", "2.00", "2.50x", "25.00", "3.20x"] + [
        "0.9877",
        "0.9123",
        "0.9753",
        "0.900",
    ]


def test_what_was_done_lists_structure_distillation_and_int8():
    page = _report_html("minilm", MEASURED, ENC)
    done = page[page.index("<h2>What was done</h2>") : page.index("<h2>Plots</h2>")]
    assert "FFN widths per layer (neurons kept): 640, 608, 576, 512." in done
    assert "Attention heads kept: 5 of 48." in done
    assert "Encoder layers kept: 0, 1, 2, 4." in done
    assert "22,713,216 → 17,988,480 (79.2% of the original)" in done
    assert "Distillation loss: 0.1730 → 0.1284" in done
    assert "units kept fp32: <code>encoder.layer.0.output.dense</code>" in done
    assert "except their 4 outlier input channels (kept fp32): <code>encoder.layer.1" in done
    assert "from distillation step 450 of 600" in done and "before distillation: 0.9162" in done
    assert "579 → 260 nodes" in done
    assert "Padding-free (packed) graph: only attention sees the padding slots" in done
    assert "Each attention block is one fused ONNX Runtime node (QAttention)" in done
    assert "Per-token int8" not in done
    layers = cells(page, "layers")
    assert layers[1] == ["encoder.layer.0", "0", "640", "3"]
    assert layers[4] == ["encoder.layer.3", "4", "512", "all"]  # student 3 is original layer 4


def test_report_embeds_png_plots():
    page = _report_html("minilm", MEASURED, ENC)
    assert '<img alt="latency, size and fidelity per variant" src="data:image/png;base64,' in page
    pngs = decoded_pngs(page)
    assert len(pngs) == 2  # variants figure + FFN widths per layer
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


def test_hostile_names_are_escaped_in_page_and_plot():
    evil = "<script>alert('x')</script>$a_b$ & $"
    measured = {"ort_fp32": MEASURED["ort_fp32"], evil: MEASURED["slimkit"]}
    enc = {**ENC, "model": "<b>m</b>", "int8": {**ENC["int8"], "excluded_units": ["<i>u</i>"]}}
    page = _report_html("<img src=x onerror=alert(1)>", measured, enc)
    assert "<script>" not in page and "<img src=x" not in page and "<b>m</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;$a_b$ &amp; $" in page
    assert "&lt;i&gt;u&lt;/i&gt;" in page
    assert cells(page, "variants")[2][:3] == [
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;$a_b$ &amp; $",
        "18.08",
        "5.00x",
    ]
    assert all(p.startswith(b"\x89PNG") for p in decoded_pngs(page))  # `$` is not mathtext


def test_int8_only_run_without_structural_or_reference():
    page = _report_html("int8", {"slimkit": {"bytes": 1_000_000}}, {"int8": ENC["int8"]})
    assert cells(page, "variants")[1] == ["slimkit", "1.00", "-"] + ["-"] * 4
    assert "No fp32 variant measured" in page and 'id="layers"' not in page
    assert len(decoded_pngs(page)) == 1  # variants figure only; no FFN widths
    assert plots.encoder_layer_widths(None) is None
    assert plots.encoder_variants({}, None) is None
    assert "Nothing measured" in _report_html("empty", {}, None)
    padded = {**ENC["int8"], "config": {**ENC["int8"]["config"], "packed": False}}
    assert "Padding-free" not in _report_html("int8", {"slimkit": {"bytes": 1}}, {"int8": padded})
    plain = {**ENC["int8"], "config": {**ENC["int8"]["config"], "fused_attention": False}}
    page = _report_html("int8", {"slimkit": {"bytes": 1}}, {"int8": plain})
    assert "Padding-free" in page and "fused ONNX Runtime node" not in page
    static = {**ENC["int8"], "config": {**ENC["int8"]["config"], "mode": "static"}}
    page = _report_html("int8", {"slimkit": {"bytes": 1}}, {"int8": static})
    assert "fused ONNX Runtime node (MultiHeadAttention)" in page
    per_token = {**ENC["int8"], "token_scaled_units": ["a", "b", "c"]}
    page = _report_html("int8", {"slimkit": {"bytes": 1}}, {"int8": per_token})
    assert "Per-token int8 ranges for 3 FFN units" in page
    assert "Chosen by emulated gain" not in page  # chosen by hand (per_token_share 1)
    gain = {"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1}
    page = _report_html(
        "int8", {"slimkit": {"bytes": 1}}, {"int8": {**per_token, "per_token_gain": gain}}
    )
    assert "they give 90% of what per-token ranges gain across all 4 candidate units" in page


def test_headline_names_the_deployed_model():
    page = _report_html("minilm", MEASURED, ENC)
    assert (
        "<b>slimkit</b>: 5.00x smaller than ort_fp32, faster by 2.50x at batch 1, "
        "3.20x at batch 32; cosine mean 0.9877, Spearman 0.9753." in page
    )
