import math

import torch
from torch import nn

from slimkit.metrics import (
    compare_outputs,
    count_flops,
    count_nonzeros,
    count_params,
    evaluate,
    sqnr_db,
)
from slimkit.models import build_model


def test_flops_of_a_linear_layer():
    m = nn.Linear(100, 10)
    assert count_flops(m, torch.zeros(1, 100)) == 2 * 100 * 10


def test_sqnr_and_fidelity():
    x = torch.randn(1000)
    assert sqnr_db(x, x) == math.inf
    noisy = x + 0.01 * torch.randn(1000)
    assert 35 < sqnr_db(x, noisy) < 45  # 20*log10(1/0.01) = 40 dB
    f = compare_outputs(torch.eye(3), torch.eye(3))
    assert f.cosine_min == 1.0 and f.max_abs_diff == 0.0 and f.top1_agreement == 1.0


def test_nonzeros_count_real_zeros():
    m = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        m.weight[:2] = 0
    assert count_params(m) == 16 and count_nonzeros(m) == 8


def test_evaluate_measures_written_files(digits):
    model = build_model("lenet5", image_size=8)
    m = evaluate(model, digits, runs=3, batches=(1,))
    assert m.params == 131_080 and m.bytes_safetensors > 4 * m.params
    assert m.bytes_onnx > 4 * m.params
    assert {r["runner"] for r in m.latency} == {"torch", "ort"}
    assert all(r["median_ms"] > 0 and r["threads"] == 2 for r in m.latency)
    assert 0.0 <= m.accuracy <= 1.0
