"""Every example recipe runs end to end on a reduced setting (digits, a few batches)."""

from pathlib import Path

import pytest
import torch
import yaml

import slimkit
from slimkit.pipeline import compress, parse_recipe

EXAMPLES = ["lenet5_deep_compression", "lenet300", "resnet_structured_int8", "mobilenetv2_qat"]


def reduce(node):
    """Cut every training config in a recipe to one epoch of two batches."""
    if isinstance(node, dict):
        if "epochs" in node:
            node.update(epochs=1, max_batches=2)
        for v in node.values():
            reduce(v)
    elif isinstance(node, list):
        for v in node:
            reduce(v)
    return node


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_reduced(name, tmp_path):
    raw = yaml.safe_load(Path(f"examples/{name}.yaml").read_text())
    reduce(raw["stages"])
    raw["stages"][0]["train"].update(epochs=4, max_batches=None, lr=0.005)  # a usable model
    raw["data"] = {
        "dataset": "digits",
        "train_samples": 256,
        "test_samples": 128,
        "calib_samples": 64,
    }
    raw["measure"] = {"latency_runs": 2, "onnx": False}
    raw["max_accuracy_drop"] = None
    for stage in raw["stages"]:
        if "benchmark" in stage:
            stage["benchmark"].update(runs=2, batches=[1])
        if "quantize" in stage and stage["quantize"]["method"] in ("int8-static", "qat"):
            stage["quantize"]["calib_samples"] = 64
    res = compress(parse_recipe(raw, name), tmp_path, log=lambda s: None)
    arts = res.metrics["artifacts"]
    assert arts, "the example exports artifacts"
    for fmt, info in arts.items():
        assert (tmp_path / info["path"]).stat().st_size == info["bytes"] > 0, fmt
    if "slim" in arts:
        loaded = slimkit.load(tmp_path / arts["slim"]["path"])
        assert arts["slim"]["accuracy"] == res.rows[-1]["accuracy"] or "onnx-int8" in arts
        assert loaded(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    if "onnx-int8" in arts:
        # ONNX Runtime int8 on the file written keeps the float model's accuracy.
        assert arts["onnx-int8"]["accuracy"] >= res.rows[-1]["accuracy"] - 0.1
    assert (tmp_path / "report.html").exists()
