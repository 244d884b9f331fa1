"""Edge/server split: head o tail equals the model, invalid cuts list the valid ones, the
objective adds up, and the exported pair composes in ONNX Runtime."""

import json

import pytest
import torch

import slimkit as sk
from slimkit.decomposition import (
    SplitConfig,
    SVDDecomposition,
    cut_points,
    export_split,
    plan_split,
    split_model,
)
from slimkit.decomposition.split import transfer_ms
from slimkit.errors import ConfigError
from slimkit.testing import randomize_batchnorm, tiny_models


def _resnet():
    torch.manual_seed(0)
    return randomize_batchnorm(sk.build_model("resnet", image_size=8)).eval()


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_head_then_tail_equals_the_model_at_every_cut(name):
    model = randomize_batchnorm(tiny_models()[name]).eval()
    x = torch.randn(3, 1, 8, 8)
    cuts = cut_points(model, x)
    assert cuts, f"{name} has no valid cut"
    with torch.no_grad():
        ref = model(x)
        for cut in cuts:
            head, tail = split_model(model, x, cut.name)
            mid = head(x)
            assert tuple(mid.shape[1:]) == cut.shape[1:]
            assert cut.bytes == mid[:1].numel() * 4  # float32 at batch 1
            assert torch.equal(tail(mid), ref), cut.name


def test_cuts_never_fall_inside_a_residual_block():
    names = [c.name for c in cut_points(_resnet(), torch.randn(1, 1, 8, 8))]
    assert "layers.0.relu2" in names and "stem.2" in names
    assert not any(
        n.startswith(("layers.0.conv", "layers.0.bn", "layers.1.shortcut")) for n in names
    )


def test_invalid_cut_lists_the_valid_ones():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"inside a residual block.*'layers.0.relu2'"):
        split_model(_resnet(), x, "layers.0.conv2")
    with pytest.raises(ConfigError, match="no layer or graph node"):
        split_model(_resnet(), x, "layers.9")


def test_svd_bottleneck_becomes_a_cheap_cut():
    model = sk.build_model("lenet300", image_size=8).eval()
    sk.decompose_(model, SVDDecomposition(rank=8, targets=["fc1"]))
    cuts = {c.name: c.bytes for c in cut_points(model, torch.randn(1, 1, 8, 8))}
    assert cuts["fc1.0"] == 8 * 4 < cuts["fc1.1"] == 300 * 4


def test_objective_is_edge_plus_transfer_plus_server():
    cfg = SplitConfig(bandwidth_mbps=2.0, rtt_ms=1.5, edge_slowdown=3.0, server_speedup=2.0, runs=3)
    plan = plan_split(_resnet(), torch.randn(1, 1, 8, 8), cfg)
    for s in plan.scores:
        assert s.edge_ms == pytest.approx(s.head_ms * 3.0)
        assert s.server_ms == pytest.approx(s.tail_ms / 2.0)
        assert s.transfer_ms == pytest.approx(1.5 + s.cut.bytes * 8 / 2e6 * 1000)
        assert s.total_ms == pytest.approx(s.edge_ms + s.transfer_ms + s.server_ms)
    assert plan.best.total_ms == min(s.total_ms for s in plan.scores)
    assert transfer_ms(1_000_000, SplitConfig(bandwidth_mbps=8.0)) == pytest.approx(1000.0)


def test_slow_network_pushes_the_cut_to_the_smallest_activation():
    # At 0.01 Mbit/s transfer dominates every latency on this machine by orders of magnitude.
    plan = plan_split(_resnet(), torch.randn(1, 1, 8, 8), SplitConfig(bandwidth_mbps=0.01, runs=3))
    assert plan.best.cut.bytes == min(s.cut.bytes for s in plan.scores)


def test_export_writes_head_tail_and_manifest(tmp_path):
    model = _resnet()
    x = torch.randn(2, 1, 8, 8)
    res = export_split(model, x, tmp_path, SplitConfig(at="layers.1.relu2", runs=3))
    assert res.max_abs_diff <= 1e-4
    manifest = json.loads((tmp_path / "split.json").read_text())
    assert manifest["best"] == "layers.1.relu2" and manifest["head"] == "head.onnx"
    assert (tmp_path / "head.onnx").stat().st_size > 0 and (
        tmp_path / "tail.onnx"
    ).stat().st_size > 0
    assert len(manifest["candidates"]) == 1


def test_export_checks_before_it_writes_and_keeps_an_earlier_split_whole(tmp_path, monkeypatch):
    from slimkit.decomposition import split
    from slimkit.errors import ParityError

    model, x = _resnet(), torch.randn(2, 1, 8, 8)
    export_split(model, x, tmp_path, SplitConfig(at="layers.1.relu2", runs=3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(split, "composition_diff", lambda *a: 1.0)  # the composed pair disagrees
    with pytest.raises(ParityError, match="tail\\(head\\(x\\)\\) differs"):
        export_split(model, x, tmp_path, SplitConfig(at="layers.0.relu2", runs=3))
    # was: a new head and tail beside the old manifest (another cut)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    blocked = tmp_path / "blocked"
    (blocked / "tail.onnx").mkdir(parents=True)
    timed = []
    monkeypatch.setattr(split, "plan_split", lambda *a: timed.append(1))
    with pytest.raises(ConfigError, match="tail.onnx': it is a folder"):
        export_split(model, x, blocked, SplitConfig(runs=3))
    assert timed == []  # refused before every cut was timed (was: after)


def test_bad_config():
    with pytest.raises(ConfigError, match="bandwidth_mbps"):
        SplitConfig(bandwidth_mbps=0)
