import json

import pytest

from slimkit.transformers import (
    DistillConfig,
    EncoderInt8,
    EncoderStructural,
    MeasureConfig,
    compress_encoder,
)


@pytest.mark.slow
def test_compress_encoder_writes_measured_artifacts(tmp_path, sentences):
    m = compress_encoder(
        None,
        tmp_path,
        int8=EncoderInt8(auto_exclude=1, scan_sentences=8, calib_sentences=8),
        structural=EncoderStructural(
            keep_layers=(0, 1, 2, 3, 5), distill=DistillConfig(steps=2, batch_size=4)
        ),
        sentences=sentences,
        measure=MeasureConfig(batch_sizes=(1, 4), batches=2, rounds=1),
    )
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["int8"]["excluded_units"] == m["int8"]["excluded_units"]
    assert on_disk["structural"]["kept_layers"] == [0, 1, 2, 3, 5]
    row = on_disk["measured"]["slimkit"]
    assert row["bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert row["bytes"] < 0.35 * on_disk["measured"]["ort_fp32"]["bytes"]
    assert row["latency_ms_b1"] > 0 and row["latency_ms_b4"] > 0
    assert on_disk["measured"]["ort_fp32"]["fidelity"]["cosine_min"] > 0.9999
    # one layer dropped, only 2 distill steps, int8: measured 0.858 on these 8 sentences
    assert row["fidelity"]["cosine_mean"] > 0.8
    assert (tmp_path / "tokenizer.json").is_file()
