"""Observers: exact ranges, outlier handling, finite grids on degenerate inputs, STE gradients."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.errors import NumericsError
from slimkit.metrics import sqnr_db
from slimkit.quantization.fakequant import fake_quant_act, fake_quant_weight
from slimkit.quantization.observers import (
    UINT8,
    Observer,
    ObserverKind,
    fake_quant_np,
    qparams_from_range,
    weight_qparams,
)

KINDS = [k.value for k in ObserverKind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [0.0, 3.7, -2.5])
def test_constant_and_zero_inputs_give_finite_grids(kind, value):
    obs = Observer(kind)
    obs.observe(torch.full((4, 3, 5, 5), value))
    scale, zp = obs.qparams()
    assert math.isfinite(scale) and scale > 0
    assert UINT8[0] <= zp <= UINT8[1]
    # The constant itself is representable within half a step; zero exactly.
    x = np.array([value, 0.0], dtype=np.float32)
    q = fake_quant_np(x, scale, zp, *UINT8)
    assert q[1] == 0.0
    assert abs(q[0] - value) <= scale / 2 + 1e-6


def test_minmax_is_exact_over_batches():
    obs = Observer("minmax")
    obs.observe(torch.tensor([-1.0, 2.0]))
    obs.observe(torch.tensor([0.5, 3.0]))
    assert obs.observed_range() == (-1.0, 3.0)
    scale, zp = obs.qparams()
    assert scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp == round(1.0 / scale)


def test_percentile_clips_outliers_minmax_does_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, generator=g)
    x[0] = 1000.0
    mm, pc = Observer("minmax"), Observer("percentile", percentile=99.9)
    for o in (mm, pc):
        o.observe(x)
    assert mm.observed_range()[1] == 1000.0
    assert pc.observed_range()[1] < 5.0


def test_mse_beats_minmax_on_heavy_tails():
    torch.manual_seed(1)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))  # max |x| ~ 12
    errs = {}
    for k in ("minmax", "mse"):
        o = Observer(k)
        o.observe(x)
        s, z = o.qparams()
        qx = fake_quant_act(x, torch.tensor(s), torch.tensor(z, dtype=torch.int32))
        errs[k] = float(((qx - x) ** 2).mean())
    assert errs["mse"] < 0.95 * errs["minmax"], errs


@pytest.mark.parametrize("kind", ["entropy", "percentile"])
def test_entropy_and_percentile_ignore_a_lone_outlier(kind):
    torch.manual_seed(2)
    x = torch.randn(50_000).relu()  # ReLU-like activations
    x[0] = 60.0
    o = Observer(kind, percentile=99.99)
    o.observe(x)
    lo, hi = o.observed_range()
    assert lo <= 0.0 and 1.0 < hi < 10.0, (lo, hi)  # the bulk ends near 4, the outlier at 60


def test_observer_rejects_nan_and_no_data():
    with pytest.raises(NumericsError, match="NaN"):
        Observer("mse").observe(torch.tensor([1.0, float("nan")]))
    with pytest.raises(NumericsError, match="no data"):
        Observer("minmax").qparams()


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4))
def test_zero_is_always_exact(a, b):
    lo, hi = min(a, b), max(a, b)
    scale, zp = qparams_from_range(lo, hi, *UINT8)
    assert scale > 0 and math.isfinite(scale)
    assert UINT8[0] <= zp <= UINT8[1]
    assert fake_quant_np(np.zeros(1, np.float32), scale, zp, *UINT8)[0] == 0.0


def test_per_channel_weight_grid_sqnr_and_zero_channel():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.01, 2.0, 16).view(-1, 1, 1, 1)
    w[3] = 0.0  # an all-zero (pruned) channel
    scale, zp = weight_qparams(w, per_channel=True)
    assert scale.shape == (16,) and torch.isfinite(scale).all() and scale[3] == 1.0
    wq = fake_quant_weight(w, scale, zp)
    assert (wq[3] == 0).all()
    codes = torch.round(wq / scale.view(-1, 1, 1, 1))
    assert codes.abs().max() <= 127
    s_pc = sqnr_db(w, wq)
    s_pt = sqnr_db(
        w, fake_quant_weight(w, *[t.expand(16).clone() for t in weight_qparams(w, False)])
    )
    assert s_pc > 38.0  # int8 per channel, uniform weights: ~40 dB
    assert s_pc > s_pt + 3.0  # per-channel beats per-tensor when channel ranges differ


def test_straight_through_gradient():
    x = torch.tensor([-1.0, 0.1, 0.5, 3.0], requires_grad=True)
    y = fake_quant_act(x, torch.tensor(0.01), torch.tensor(10, dtype=torch.int32))
    y.sum().backward()
    # Grid covers [-0.1, 2.45]: the gradient passes inside, is zero for clipped values.
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
