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
