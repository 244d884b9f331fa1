"""The runner refuses what it cannot measure or run before touching the output folder, measures
int8 models as the int8 graph they ship as, and leaves no earlier run's files beside a new one."""

import json
import re
import shlex

import onnx
import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main
from slimkit.errors import ConfigError, SlimkitError
from slimkit.pipeline import compress, parse_recipe

QUICK_TRAIN = {"train": {"epochs": 1, "lr": 0.003, "max_batches": 2}}


def _quiet(_s: str) -> None:
    pass


def _lenet300_file(tmp_path, image_size=8, name="m.safetensors"):
    path = tmp_path / name
    slimkit.save(slimkit.build_model("lenet300", image_size=image_size), path)
    return path


def _int8_initializers(path) -> int:
    proto = onnx.load(str(path))
    return sum(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)


# ---- 1. the accuracy gate must be able to fail -----------------------------------------------


def test_an_accuracy_gate_without_data_or_a_trained_reference_is_refused(tiny, tmp_path):
    prune = {"prune": {"method": "magnitude", "sparsity": 0.5}}
    path = str(tmp_path / "m.safetensors")  # not read at parse time
    # data: null measured no accuracy, so the gate said PASS with nothing measured
    with pytest.raises(ConfigError, match="max_accuracy_drop = 0.5 needs accuracy measured"):
        parse_recipe(tiny(data=None, max_accuracy_drop=0.5, model={"path": path}, stages=[prune]))
    # a zoo model never trained: the reference was the untrained input (chance accuracy)
    with pytest.raises(ConfigError, match="builds an untrained model and no train stage"):
        parse_recipe(tiny(max_accuracy_drop=0.5, model={"zoo": "lenet5"}, stages=[prune]))
    # both measurable: accepted
    parse_recipe(tiny(max_accuracy_drop=0.5))
    parse_recipe(tiny(max_accuracy_drop=0.5, model={"path": path}, stages=[prune]))
    parse_recipe(tiny(data=None, model={"path": path}, stages=[prune]))  # no gate: fine


# ---- 2. int8 models are measured, exported and timed as int8 graphs --------------------------


def test_an_int8_model_is_measured_exported_and_benchmarked_as_its_int8_graph(tiny, tmp_path):
    stages = [
        QUICK_TRAIN,
        {"quantize": {"method": "int8-dynamic"}},
        {"export": {"formats": ["onnx"]}},
        {"benchmark": {"runs": 2, "batches": [1]}},
    ]
    raw = tiny(stages=stages, measure={"latency_runs": 2, "onnx": True})
    res = compress(parse_recipe(raw), tmp_path, log=_quiet)
    # model.onnx was a plain fp32 graph
    assert _int8_initializers(tmp_path / "model.onnx") > 0
    assert res.metrics["artifacts"]["onnx"]["int8"] is True
    float_row, int8_row = res.rows[1], res.rows[2]
    assert "onnx_int8" not in float_row and int8_row["onnx_int8"] is True
    # the ORT figures describe the int8 file: a quarter of the float bytes, not the same
    assert int8_row["bytes_onnx"] < float_row["bytes_onnx"] / 2
    assert int8_row["latency_ms"] > 0
    labels = {r["artifact"] for r in res.metrics["notes"]["benchmark"]}
    assert labels == {"torch", "onnx (int8)"}
    # int8 kernels vs torch is not an export error: under its own key, and the file's own
    # accuracy in ORT is measured (what the gate checks), as for onnx-int8
    assert int8_row["onnx_max_diff"] is None and int8_row["onnx_int8_max_diff"] < 1.0
    assert float_row["onnx_max_diff"] < 1e-4
    onnx_art = res.metrics["artifacts"]["onnx"]
    assert abs(onnx_art["accuracy"] - int8_row["accuracy"]) <= 0.05
    assert res.metrics["gate"]["artifact_drops_pp"].keys() == {"onnx"}


def test_a_shipped_file_that_misses_the_gate_fails_the_run(tiny, tmp_path, monkeypatch):
    from slimkit.errors import AccuracyGateError
    from slimkit.pipeline import stages as stages_module

    # The model passes the gate in torch; its int8 file, as ORT runs it, does not.
    monkeypatch.setattr(stages_module, "onnx_accuracy", lambda path, loader: 0.01)
    stages = [QUICK_TRAIN, {"export": {"formats": ["onnx-int8"]}}]
    raw = tiny(stages=stages, max_accuracy_drop=5.0)  # torch's drop is 0: export only
    with pytest.raises(AccuracyGateError, match=r"in the shipped files by onnx-int8 \d"):
        compress(parse_recipe(raw), tmp_path, log=_quiet)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["gate"]["artifacts_missed"]) == ["onnx-int8"]
    assert metrics["gate"]["passed"] is False
    assert "shipped files onnx-int8 " in (tmp_path / "report.html").read_text()


# ---- 3. a model that does not take the data's images ---------------------------------------


def test_a_model_that_does_not_take_the_datas_images_is_refused_before_the_folder_changes(
    tiny, tmp_path
):
    out = tmp_path / "run"
    compress(parse_recipe(tiny(stages=[QUICK_TRAIN])), out, log=_quiet)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    mnist = _lenet300_file(tmp_path, image_size=28)  # 28x28 inputs; digits are 8x8
    with pytest.raises(
        ConfigError, match=r"does not take the data's inputs of shape \(1, 1, 8, 8\)"
    ):
        compress(parse_recipe(tiny(model={"path": str(mnist)})), out, log=_quiet)
    with pytest.raises(ConfigError, match="model.image_size"):
        compress(parse_recipe(tiny(model={"zoo": "lenet300", "image_size": 28})), out, log=_quiet)
    # the previous run was wiped before the torch traceback
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_fix_for_a_zoo_model_that_does_not_take_the_data_names_the_key_that_differs(
    tiny, tmp_path
):
    # Every refusal's fix said "drop model.image_size", which was right: only the channels or
    # the classes differed.
    def refusal(model):
        with pytest.raises(ConfigError) as err:
            compress(
                parse_recipe(tiny(model=model, stages=[QUICK_TRAIN])), tmp_path / "run", log=_quiet
            )
        return str(err.value)

    three = refusal({"zoo": "lenet300", "kwargs": {"in_channels": 3}})  # digits: 1 channel
    assert "in the recipe: set model.kwargs.in_channels to 1 (the dataset's images have 1 " in three
    assert "model.image_size" not in three
    five = refusal({"zoo": "lenet5", "kwargs": {"num_classes": 5}})  # digits: 10 classes
    assert "the model has 5 outputs, but the data has 10 classes" in five
    assert "in the recipe: set model.kwargs.num_classes to 10" in five
    assert "model.image_size" not in five
    both = refusal({"zoo": "lenet300", "image_size": 28, "kwargs": {"in_channels": 3}})
    assert re.search(
        r"set model.kwargs.in_channels to 1 .* and drop model.image_size .* \(8\)", both
    )
    assert refusal({"zoo": "lenet300", "image_size": 28}).endswith(
        "in the recipe: drop model.image_size (it then follows the dataset) or set it to the "
        "dataset's image size (8)"
    )
    assert not (tmp_path / "run").exists()


# ---- 4. onnx-int8 with data: null -----------------------------------------------------------


def test_onnx_int8_export_without_data_is_refused_unless_the_model_is_int8(tiny, tmp_path):
    export = {"export": {"formats": ["onnx-int8"]}}
    # was an AssertionError from the export stage, after the stages before it
    with pytest.raises(ConfigError, match="stages\\[0\\].export: formats onnx-int8 .* data: null"):
        parse_recipe(tiny(data=None, stages=[export]))
    # a float model file: refused when it is loaded, before the folder is made
    path = _lenet300_file(tmp_path)
    r = parse_recipe(tiny(data=None, model={"path": str(path)}, stages=[export]))
    with pytest.raises(ConfigError, match="holds no int8 layers"):
        compress(r, tmp_path / "refused", log=_quiet)
    assert not (tmp_path / "refused").exists()
    # an int8 model needs no calibration data
    r = parse_recipe(
        tiny(data=None, stages=[{"quantize": {"method": "int8-dynamic"}}, export]),
    )
    res = compress(r, tmp_path / "run", log=_quiet)
    assert _int8_initializers(tmp_path / "run" / res.metrics["artifacts"]["onnx-int8"]["path"])


def test_onnx_with_onnx_int8_of_an_int8_model_is_refused_as_the_same_graph_twice(tiny, tmp_path):
    # Both wrote the one int8 graph: model.onnx and model.int8.onnx, byte for byte the same.
    both = {"export": {"formats": ["slim", "onnx", "onnx-int8"]}}
    int8 = {"quantize": {"method": "int8-dynamic"}}
    with pytest.raises(
        ConfigError,
        match=r"stages\[2\].export: formats \['slim', 'onnx', 'onnx-int8'\] would write the same "
        r"int8 graph twice: the model is int8 after stages\[1\].quantize \(int8-dynamic\), so "
        r"onnx already writes its int8 graph \(model.onnx\).*; drop onnx-int8",
    ):
        parse_recipe(tiny(stages=[QUICK_TRAIN, int8, both]))
    with pytest.raises(ConfigError, match=r"after stages\[1\].quantize \(qat\)"):
        parse_recipe(tiny(stages=[QUICK_TRAIN, {"quantize": {"method": "qat"}}, both]))
    # either one alone, or both of a float model (two different graphs): accepted
    parse_recipe(tiny(stages=[QUICK_TRAIN, int8, {"export": {"formats": ["onnx"]}}]))
    parse_recipe(tiny(stages=[QUICK_TRAIN, int8, {"export": {"formats": ["onnx-int8"]}}]))
    parse_recipe(tiny(stages=[QUICK_TRAIN, {"quantize": {"method": "kmeans", "bits": 4}}, both]))
    # a model file that is already int8: refused when it is loaded, before the folder is made
    path = tmp_path / "int8.safetensors"
    model = slimkit.build_model("lenet300", image_size=8)
    slimkit.save(slimkit.quantize_(model, slimkit.DynamicInt8()), path)
    r = parse_recipe(tiny(model={"path": str(path)}, stages=[both]))
    with pytest.raises(
        ConfigError, match=r"stages\[0\].export: formats .* the model file holds int8 layers"
    ):
        compress(r, tmp_path / "refused", log=_quiet)
    assert not (tmp_path / "refused").exists()


# ---- 5. a row without a .slim size ---------------------------------------------------------


def test_plots_leave_out_stages_without_a_slim_size():
    from slimkit.report.plots import accuracy_vs_bytes

    rows = [
        {"index": -1, "stage": "input", "bytes_slim": None, "accuracy": 0.1},
        {"index": 0, "stage": "train", "bytes_slim": 12_000, "accuracy": 0.9},
    ]
    assert accuracy_vs_bytes(rows).startswith(b"\x89PNG")  # was a TypeError inside savefig
    assert accuracy_vs_bytes(rows[:1]) is None


def _no_slim(monkeypatch):
    from slimkit.export import slimformat

    def refuse(*_a, **_k):
        raise SlimkitError("the .slim writer refuses this model (test)")

    monkeypatch.setattr(slimformat, "save", refuse)


def test_a_run_whose_slim_files_are_refused_still_writes_metrics_and_report(
    tiny, tmp_path, monkeypatch
):
    _no_slim(monkeypatch)
    res = compress(parse_recipe(tiny(stages=[QUICK_TRAIN])), tmp_path, log=_quiet)
    assert all(r["bytes_slim"] is None and "slim_error" in r for r in res.rows)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["compression_ratio"] is None
    assert "compression ratio <b>-</b>" in (tmp_path / "report.html").read_text()


def test_metrics_json_is_written_before_the_report(tiny, tmp_path, monkeypatch):
    import slimkit.report.html as report_html

    def broken(_metrics, _out):
        raise RuntimeError("report failed (test)")

    monkeypatch.setattr(report_html, "write_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        compress(parse_recipe(tiny(stages=[QUICK_TRAIN])), tmp_path, log=_quiet)
    assert json.loads((tmp_path / "metrics.json").read_text())["rows"]


# ---- 6. a fresh run drops the previous run's files ------------------------------------------


def test_a_fresh_run_removes_the_previous_runs_artifacts_and_reports(tiny, tmp_path):
    out = tmp_path / "run"
    stages = [QUICK_TRAIN, {"export": {"formats": ["slim", "onnx"], "dir": "art"}}]
    compress(parse_recipe(tiny(stages=stages)), out, log=_quiet)
    old = ["art/model.slim", "art/model.onnx", "metrics.json", "report.html"]
    assert all((out / p).exists() for p in old)
    (out / "notes.txt").write_text("the user's")
    (out / "art" / "mine.onnx").write_text("the user's")
    with pytest.raises(KeyboardInterrupt):  # the new run stops after its first stage
        compress(parse_recipe(tiny(stages=stages)), out, log=_quiet, stop_after=0)
    assert [p for p in old if (out / p).exists()] == []  # sat beside the new run as its own
    assert (out / "notes.txt").exists() and (out / "art" / "mine.onnx").exists()
    assert (out / "checkpoints" / "stage_0.safetensors").exists()


def test_recorded_artifact_paths_outside_the_folder_or_with_other_names_are_kept(tmp_path):
    from slimkit.pipeline.runner import _forget_previous_run

    out = tmp_path / "run"
    out.mkdir()
    outside = tmp_path / "model.onnx"
    outside.write_text("not the run's")
    (out / "data.csv").write_text("the user's")
    arts = {
        "a": {"path": "../model.onnx"},
        "b": {"path": str(outside)},
        "c": {"path": "data.csv"},
    }
    (out / "state.json").write_text(json.dumps({"artifacts": arts}))
    _forget_previous_run(out)
    assert outside.exists() and (out / "data.csv").exists()
    assert not (out / "state.json").exists()


def test_the_recipes_input_model_and_files_behind_a_symlinked_folder_are_kept(tmp_path):
    # A run may start from an earlier run's artifact or checkpoint in the same folder: deleting
    # it lost the user's input, and --resume (which loads it again) failed.
    from slimkit.pipeline.runner import _forget_previous_run

    out = tmp_path / "run"
    (out / "art").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    (out / "art" / "model.slim").write_text("the input")
    (out / "checkpoints" / "stage_1.safetensors").write_text("a checkpoint")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.onnx").write_text("not the run's")
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    arts = {"slim": {"path": "art/model.slim"}, "onnx": {"path": "link/model.onnx"}}
    (out / "metrics.json").write_text(json.dumps({"artifacts": arts}))
    _forget_previous_run(out, keep=str(out / "art" / "model.slim"))
    assert (out / "art" / "model.slim").exists() and (elsewhere / "model.onnx").exists()
    assert not (out / "checkpoints" / "stage_1.safetensors").exists()
    (out / "checkpoints" / "stage_1.safetensors").write_text("a checkpoint")
    _forget_previous_run(out, keep=str(out / "checkpoints" / "stage_1.safetensors"))
    assert (out / "checkpoints" / "stage_1.safetensors").exists()


def test_a_fresh_run_removes_the_tokenizer_files_an_hf_run_recorded(tiny, tmp_path):
    # An HF run copies its model's tokenizer files into the folder; a fresh run left them
    # beside its own files (another model's vocab.txt beside the next HF run's tokenizer).
    from slimkit import atomic
    from slimkit.pipeline.runner import _forget_previous_run

    out = tmp_path / "run"
    (out / "sub").mkdir(parents=True)
    atomic.mark_run_folder(out)
    names = ["model.onnx", "model_fp32.onnx", "vocab.txt", "tokenizer.json", "config.json"]
    for name in [*names, "special_tokens_map.json", "notes.txt", "sub/vocab.txt"]:
        (out / name).write_text("an earlier run's, or the user's")
    (tmp_path / "vocab.txt").write_text("not the run's")
    arts = {"onnx": {"path": "model.onnx"}, "onnx-fp32": {"path": "model_fp32.onnx"}}
    recorded = ["vocab.txt", "tokenizer.json", "config.json", "notes.txt", "sub/vocab.txt"]
    metrics = {"artifacts": arts, "tokenizer_files": [*recorded, "../vocab.txt", 3]}
    (out / "metrics.json").write_text(json.dumps(metrics))
    compress(parse_recipe(tiny(stages=[QUICK_TRAIN])), out, log=_quiet)
    assert [n for n in names if (out / n).exists()] == []
    # kept: not recorded, not a name slimkit writes, not at the top of the folder, outside it
    kept = ["special_tokens_map.json", "notes.txt", "sub/vocab.txt", "../vocab.txt"]
    assert all((out / n).exists() for n in kept)
    # the recipe's model folder is never emptied, also when it is the run folder itself
    (out / "vocab.txt").write_text("the model's")
    (out / "metrics.json").write_text(json.dumps({"tokenizer_files": ["vocab.txt"]}))
    _forget_previous_run(out, keep=str(out))
    assert (out / "vocab.txt").exists()
    _forget_previous_run(out)
    assert not (out / "vocab.txt").exists()


# ---- 7. the printed resume command ---------------------------------------------------------


def test_the_resume_command_printed_after_an_interrupt_resumes(tiny, tmp_path, monkeypatch, capsys):
    import slimkit.pipeline as pipeline
    from slimkit.pipeline import runner

    folder = tmp_path / "my recipes"
    folder.mkdir()
    recipe = folder / "r [v2].yaml"
    recipe.write_text(yaml.safe_dump(tiny(stages=[QUICK_TRAIN, {"export": {"formats": ["slim"]}}])))
    out = tmp_path / "my runs" / "out"

    def interrupted(*args, **kwargs):
        return runner.compress(*args, **kwargs, stop_after=0)

    monkeypatch.setattr(pipeline, "compress", interrupted)
    argv = ["compress", str(recipe), "--out", str(out), "--set", "stages.0.train.lr=0.002"]
    assert main(argv) == 130
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if "Continue with: " in ln)
    command = shlex.split(line.split("Continue with: ", 1)[1])
    assert command == ["slimkit", *argv, "--resume"]
    monkeypatch.undo()
    assert main(command[1:]) == 0  # the digest matches: resumed, not refused
    assert "resuming" in capsys.readouterr().out


# ---- 8. model keys that were ignored, and finalize: "false" ---------------------------------


@pytest.mark.parametrize(
    "model, expect",
    [
        ({"path": "m.safetensors", "image_size": 8}, "model.image_size only applies to a zoo"),
        ({"path": "m.safetensors", "kwargs": {"width": 2}}, "model.kwargs only applies to a zoo"),
        (
            {"zoo": "lenet5", "kwargs": {"image_size": 8}},
            "model.kwargs.image_size duplicates model.image_size",
        ),
        ({"zoo": "lenet5", "image_size": 0}, "model.image_size"),
        ({"zoo": "lenet5", "path": "m.safetensors"}, "exactly one of zoo or path"),
    ],
)
def test_model_keys_that_would_be_ignored_or_fail_are_refused(tiny, model, expect):
    with pytest.raises(ConfigError, match=expect) as info:
        parse_recipe(tiny(model=model))
    assert "\n" not in str(info.value)


def test_finalize_must_be_a_boolean(tiny):
    prune = {"method": "magnitude", "sparsity": 0.5}
    with pytest.raises(ConfigError, match="finalize must be true or false, but got 'false'"):
        parse_recipe(tiny(stages=[QUICK_TRAIN, {"prune": {**prune, "finalize": "false"}}]))
    plans = parse_recipe(
        tiny(stages=[QUICK_TRAIN, {"prune": {**prune, "finalize": False}}])
    ).validate_stages()
    assert plans[1].options["finalize"] is False


# ---- 9. the CLI's ratio when nothing was measured --------------------------------------------


def test_the_cli_prints_no_ratio_when_no_slim_size_was_measured(
    tiny, tmp_path, monkeypatch, capsys
):
    _no_slim(monkeypatch)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(stages=[QUICK_TRAIN])))
    assert main(["compress", str(recipe), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "compression ratio - (" in text and "0.0x" not in text


# ---- 10. which artifact the headline ratio describes -----------------------------------------


def test_the_ratio_names_its_artifact_and_warns_when_later_stages_changed_the_model(
    tiny, tmp_path, monkeypatch
):
    stages = [
        QUICK_TRAIN,
        {"export": {"formats": ["slim"]}},
        {"prune": {"method": "magnitude", "sparsity": 0.8}},
    ]
    logged: list[str] = []
    res = compress(parse_recipe(tiny(stages=stages)), tmp_path / "a", log=logged.append)
    assert res.metrics["compression_ratio_of"] == "model.slim (stages[1])"
    (warning,) = res.metrics["warnings"]
    assert "written at stages[1], and stages[2].prune changed the model after it" in warning
    assert f"warning: {warning}" in logged
    assert "Warning: " in (tmp_path / "a" / "report.html").read_text()

    # the artifact loaded back must score what the model it was written from scored
    from slimkit.export import slimformat

    def broken_load(_path):  # predicts class 0 for every image
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        torch.nn.init.zeros_(model[1].weight)
        torch.nn.init.zeros_(model[1].bias)
        model[1].bias.data[0] = 1.0
        return model

    monkeypatch.setattr(slimformat, "load", broken_load)
    res = compress(parse_recipe(tiny(stages=stages[:2])), tmp_path / "b", log=_quiet)
    assert any("does not reproduce it" in w for w in res.metrics["warnings"])


def test_the_dense_fp32_reference_counts_batchnorm_statistics_as_the_slim_file_does(tiny, tmp_path):
    import slimkit as sk
    from slimkit.metrics import count_params, dense_fp32_bytes

    raw = tiny(model={"zoo": "resnet", "kwargs": {"width": 4}}, stages=[QUICK_TRAIN])
    compress(parse_recipe(raw), tmp_path, log=_quiet)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    model = sk.build_model("resnet", image_size=8, width=4)
    assert dense_fp32_bytes(model) > 4 * count_params(model)  # running mean / var
    # it was params * 4, leaving out the buffers the .slim file stores
    assert metrics["dense_fp32_bytes"] == dense_fp32_bytes(model)
