"""A train stage runs unchanged under torchrun: 2 processes, DDP over gloo, rank 0 writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def test_two_process_torchrun_job(tiny, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to the Python interpreter")
    raw = tiny(stages=[{"train": {"epochs": 2, "lr": 0.003}}, {"export": {"formats": ["slim"]}}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    # faulthandler: an abort prints where Python was (inside a collective, or in teardown)
    script.write_text(
        "import faulthandler, sys\nfaulthandler.enable()\nfrom slimkit.cli import run\nrun()\n"
    )
    env = {**os.environ, "SLIMKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        "compress",
        str(recipe),
        "--out",
        str(out),
    ]
    # Own process group, so a hang is cleaned up with its workers instead of leaving orphans.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the 2-process torchrun job hung")
    assert proc.returncode == 0, stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    train_row = metrics["rows"][1]
    assert train_row["stage"] == "train" and train_row["accuracy"] > 0.8
    # Only rank 0 wrote: one set of files, no temp leftovers from a second writer.
    assert sorted(p.name for p in out.iterdir()) == [
        ".slimkit-run",
        "checkpoints",
        "metrics.json",
        "model.slim",
        "report.html",
        "state.json",
    ]
    shutil.rmtree(out)
