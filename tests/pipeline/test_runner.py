"""The compress runner: measured rows, exact artifact, resume after SIGKILL, gates."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main
from slimkit.errors import NumericsError
from slimkit.pipeline import compress, parse_recipe
from slimkit.pipeline.runner import finite_gate


def test_run_measures_each_stage_and_the_artifact_reproduces_accuracy(tiny, tmp_path):
    raw = tiny(measure={"latency_runs": 3, "onnx": True})
    res = compress(parse_recipe(raw), tmp_path, log=lambda s: None)
    rows = res.rows
    assert [r["stage"] for r in rows] == ["input", "train", "prune", "finetune", "export"]
    for r in rows:
        i = "input" if r["index"] < 0 else r["index"]
        assert r["bytes_slim"] == (tmp_path / "checkpoints" / f"stage_{i}.slim").stat().st_size
        assert (
            r["bytes_safetensors"]
            == (tmp_path / "checkpoints" / f"stage_{i}.safetensors").stat().st_size
        )
        assert r["latency_ms"] > 0 and r["onnx_max_diff"] < 1e-4
    weights = sum(v["numel"] for v in rows[2]["layers"].values())
    zeros = sum(v["numel"] * v["sparsity"] for v in rows[2]["layers"].values())
    assert zeros == pytest.approx(0.8 * weights, abs=2)  # exact global sparsity, kept by finetune
    assert sum(v["numel"] * v["sparsity"] for v in rows[3]["layers"].values()) >= zeros - 1
    assert rows[1]["accuracy"] > 0.8
    assert (
        rows[2]["bytes_slim"] < rows[1]["bytes_slim"] / 3
    )  # sparse storage really shrinks the file
    slim = res.metrics["artifacts"]["slim"]
    assert slim["accuracy"] == rows[-1]["accuracy"]  # the file itself, loaded back
    loaded = slimkit.load(tmp_path / slim["path"])
    ck = slimkit.load(tmp_path / "checkpoints" / "stage_3.safetensors")
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded(x), ck(x))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["gate"]["passed"] and metrics["compression_ratio"] > 3
    assert (tmp_path / "report.html").read_text().count("<img") >= 3


def _wait_for_stage(out: Path, proc, stage: int, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        state = out / "state.json"
        if state.exists() and json.loads(state.read_text())["finished"] >= stage:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.02)


def _killable_run(tiny, tmp_path, finetune_epochs):
    """A recipe file, its uninterrupted reference artifact, and an output folder to kill runs in."""
    raw = tiny(
        stages=[
            {"train": {"epochs": 2, "lr": 0.003}},
            {"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
            {"finetune": {"epochs": finetune_epochs, "lr": 0.001}},
            {"export": {"formats": ["slim"]}},
        ]
    )
    ref = tmp_path / "ref"
    compress(parse_recipe(raw), ref, log=lambda s: None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    return recipe, ref / "model.slim", tmp_path / "killed"


def _spawn_compress(recipe, out, resume=False):
    # One torch thread like this test process: float sums then run in the same order.
    env = {**os.environ, "SLIMKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    args = ["compress", str(recipe), "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from slimkit.cli import main; sys.exit(main())", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_resume_after_sigkill_gives_a_byte_identical_artifact(tiny, tmp_path):
    recipe, ref, out = _killable_run(tiny, tmp_path, finetune_epochs=3)
    proc = _spawn_compress(recipe, out)
    _wait_for_stage(out, proc, 1)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = json.loads((out / "state.json").read_text())["finished"]
    assert main(["compress", str(recipe), "--out", str(out), "--resume"]) == 0
    assert (out / "model.slim").read_bytes() == ref.read_bytes()
    assert killed and finished < 3, "the run finished before it could be killed"


def test_missed_accuracy_gate_exits_1_and_still_saves(tiny, tmp_path):
    raw = tiny(
        max_accuracy_drop=0.0,
        stages=[
            {"train": {"epochs": 2, "lr": 0.003}},
            {"prune": {"method": "magnitude", "sparsity": 0.995, "scope": "global"}},
            {"export": {"formats": ["slim"]}},
        ],
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--out", str(out)]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gate"]["passed"] is False and metrics["gate"]["drop_pp"] > 0
    assert "FAIL" in (out / "report.html").read_text()
    assert (out / "model.slim").stat().st_size > 0


def test_finite_gate_names_the_first_bad_layer():
    model = slimkit.build_model("lenet300", image_size=8)
    with torch.no_grad():
        model.fc2.weight.fill_(1e37)  # finite weights, but 300 of them sum past float32's max
    with pytest.raises(NumericsError, match="layer 'fc2' is the first"):
        finite_gate(model, torch.randn(4, 1, 8, 8), "after stages[1].prune")
    model.fc3.bias.data[0] = float("nan")
    with pytest.raises(NumericsError, match="fc3.bias"):
        finite_gate(model, torch.randn(4, 1, 8, 8), "x")


def test_repeated_sigkill_at_random_points_then_resume_is_byte_identical(tiny, tmp_path):
    import random

    recipe, ref, out = _killable_run(tiny, tmp_path, finetune_epochs=2)
    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        proc = _spawn_compress(recipe, out, resume=attempt > 0)
        time.sleep(rng.uniform(1.5, 5.0))  # a random point: import, a stage, a checkpoint write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert main(["compress", str(recipe), "--out", str(out), "--resume"]) == 0
    got, want = (out / "model.slim").read_bytes(), ref.read_bytes()
    print(f"\nkills survived: {kills}; artifact bytes compared: {len(got):,} vs {len(want):,}")
    assert kills >= 2
    assert got == want
