"""Latency's p90 is the nearest-rank percentile (it was one rank high: the maximum of 10 runs),
and evaluate counts FLOPs of one sample, the input its latency repeats to each batch."""

import torch

from slimkit.metrics import count_flops, evaluate
from slimkit.metrics.latency import _summary
from slimkit.models import build_model


def test_p90_is_the_nearest_rank_not_the_maximum():
    assert _summary("torch", 1, 1, [float(t) for t in range(10, 0, -1)]).p90_ms == 9.0
    assert _summary("torch", 1, 1, [float(t) for t in range(1, 21)]).p90_ms == 18.0
    assert _summary("torch", 1, 1, [5.0]).p90_ms == 5.0
    assert _summary("torch", 1, 1, [1.0, 2.0]).p90_ms == 2.0


def test_evaluate_counts_flops_of_one_sample_whatever_the_example_batch():
    model = build_model("lenet300", image_size=8, seed=0)
    x = torch.randn(4, 1, 8, 8)
    m = evaluate(model, example_input=x, runners=("torch",), batches=(1,), runs=1)
    assert m.flops == count_flops(model, x[:1]) > 0
