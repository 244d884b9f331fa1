import numpy as np
import pytest

from slimkit.transformers.bench import interleaved_latency


def _recording(log, name):
    def run(ids, mask):
        log.append((name, int(ids[0, 0])))

    return run


def _batches(n):
    return [(np.full((1, 3), k, dtype=np.int64), np.ones((1, 3), dtype=np.int64)) for k in range(n)]


def test_blocks_mode_runs_each_variant_through_all_batches_in_a_row():
    log: list = []
    runners = {"a": _recording(log, "a"), "b": _recording(log, "b")}
    out = interleaved_latency(runners, _batches(3), rounds=2, warmup=1, mode="blocks", pause_s=0)
    # per round: a warm-up call then 3 timed calls for a, then the same for b
    one_round = [("a", 0), ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 0), ("b", 1), ("b", 2)]
    assert log == one_round * 2
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())


def test_calls_mode_alternates_variants_per_batch_and_bad_mode_is_refused():
    log: list = []
    runners = {"a": _recording(log, "a"), "b": _recording(log, "b")}
    interleaved_latency(runners, _batches(2), rounds=1, warmup=1, mode="calls")
    assert log == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    with pytest.raises(ValueError, match="blocks"):
        interleaved_latency(runners, _batches(1), mode="cold")


@pytest.mark.parametrize("mode", ["blocks", "calls"])
def test_per_round_medians_come_from_each_rounds_own_calls(mode, monkeypatch):
    """A runner that slows down round by round (on a fake clock): each round's median is that
    round's own."""
    import slimkit.transformers.bench as bench

    clock = {"t": 0.0, "n": 0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)

    def slowing(ids, mask):
        clock["n"] += 1
        clock["t"] += 0.001 * (1 + clock["n"] // 10)  # 1 ms per call, +1 ms every 10 calls

    rounds: dict = {}
    out = interleaved_latency(
        {"s": slowing}, _batches(9), rounds=3, warmup=1, mode=mode, per_round=rounds
    )
    med = rounds["s"]
    assert len(med) == 3 and med[0] < med[1] < med[2]
    assert med[0] == pytest.approx(1.0) and med[2] == pytest.approx(3.0)  # ms
    assert out["s"] == pytest.approx(2.0)
