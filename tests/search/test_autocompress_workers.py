"""`slimkit search worker` on auto-compress studies: a study made by `slimkit search auto
MODEL_FILE` records the file, the data and the output folder, so workers add its trials and the
rerun of `search auto` picks the best of all of them; a study with no file to load (Python API)
or whose file is gone or changed is refused, adding nothing."""

import json
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from slimkit import io as slim_io
from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.search.autocompress import AutoCompressConfig, auto_compress, file_sha256
from slimkit.search.study import load_task
from slimkit.search.worker import run_worker

# One pruning step of 2 batches, 1 centroid batch (the API study only; the CLI has no knobs).
FAST = {"prune_steps": 1, "finetune_epochs": 1, "centroid_epochs": 1, "max_batches": 2}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "digits.safetensors"
    argv = ["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out", str(path)]
    assert main(argv) == 0
    return path


def auto_argv(model, out, url, study):
    return [
        "search",
        "auto",
        str(model),
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--max-bytes",
        "60000",
        "--max-accuracy-drop",
        "50",
        "--storage",
        url,
        "--study",
        study,
    ]


def finished(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def test_workers_add_trials_to_a_cli_study_and_the_rerun_picks_the_best(
    model_file, tmp_path, capsys
):
    url = f"sqlite:///{tmp_path / 's.db'}"
    out = tmp_path / "auto"
    auto = auto_argv(model_file, out, url, "w")
    assert main([*auto, "--trials", "1"]) == 0  # creates the study, runs trial 0
    assert load_task("w", url)["source"] == {
        "model": str(model_file.resolve()),
        "sha256": file_sha256(model_file),
        "dataset": "digits",
        "batch_size": 64,
        "image_size": 8,
        "out": str(out.resolve()),
    }
    assert run_worker("w", url, 2).complete == 2
    # a second worker call adds trials up to the count
    assert run_worker("w", url, 3).complete == 3
    # no --trials: the study's own count (1) is already met
    assert run_worker("w", url).complete == 3
    trials = finished(url, "w")
    assert [t.number for t in trials] == [0, 1, 2]
    for t in trials:
        artifact = out / "trials" / f"trial_{t.number}.slim"
        assert t.user_attrs["artifact"] == str(artifact.resolve())
        assert artifact.stat().st_size == t.user_attrs["bytes"]
    # Each worker call samples with its own seed: the same seed proposed trial 1 again.
    assert trials[1].params != trials[2].params
    capsys.readouterr()

    # The rerun with the same options resumes: no new trial, best.slim from the workers' trials.
    assert main([*auto, "--trials", "3"]) == 0
    assert len(finished(url, "w")) == 3
    result = json.loads((out / "auto_compress.json").read_text())
    assert [r["number"] for r in result["trials"]] == [0, 1, 2]
    best = result["best"]
    chosen = out / "trials" / f"trial_{best['number']}.slim"
    assert (out / "best.slim").read_bytes() == chosen.read_bytes()
    assert (out / "best.slim").stat().st_size == best["bytes"] <= 60_000
    assert f"artifact: {out / 'best.slim'}" in capsys.readouterr().out.replace("\n", "")

    # Another --out is another task: refused naming what differs, creating no folder.
    other = tmp_path / "elsewhere"
    assert main([*auto_argv(model_file, other, url, "w"), "--trials", "3"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "was created with --out (absolute)" in err and str(out.resolve()) in err
    assert len(finished(url, "w")) == 3
    assert not other.exists()

    # A best trial's file that another study overwrote (same --out, same trial number) is not
    # copied as best.slim: the study recorded what the trial wrote.
    original = chosen.read_bytes()
    chosen.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert main([*auto, "--trials", "3"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"the chosen trial {best['number']}'s artifact" in err and "SHA-256 differs" in err
    chosen.write_bytes(original)

    # The best trial's artifact missing where the study says: a ConfigError naming both.
    chosen.unlink()
    assert main([*auto, "--trials", "3"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"the chosen trial {best['number']}'s artifact {chosen.resolve()} is missing" in err


def test_worker_and_cli_refuse_an_api_study_that_has_no_model_file(model_file, tmp_path, capsys):
    from slimkit.data import load_dataset

    url = f"sqlite:///{tmp_path / 'api.db'}"
    model = build_model("lenet300", image_size=8, seed=0)
    cfg = AutoCompressConfig(max_bytes=60_000, n_trials=1, **FAST)
    auto_compress(model, load_dataset("digits"), cfg, tmp_path / "api", storage=url, study_name="a")
    assert "source" not in load_task("a", url)
    with pytest.raises(ConfigError, match=r"created by the Python API auto_compress") as info:
        run_worker("a", url, 2)
    assert "slimkit search auto MODEL_FILE" in str(info.value)
    # 'search auto' cannot resume it either, and says why (it said only "another task").
    capsys.readouterr()
    assert main([*auto_argv(model_file, tmp_path / "api", url, "a"), "--trials", "2"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "made by auto_compress without a model file" in err
    assert "auto_compress(model, data, cfg, out, study_name='a')" in err
    assert len(finished(url, "a")) == 1


def test_worker_refuses_a_missing_or_changed_model_file_and_adds_nothing(
    model_file, tmp_path, capsys
):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    model = tmp_path / "copy.safetensors"
    shutil.copyfile(model_file, model)
    out = tmp_path / "auto"
    assert main([*auto_argv(model, out, url, "m"), "--trials", "1"]) == 0
    shutil.rmtree(out)  # a worker that refuses must not write the trials folder again

    model.unlink()
    with pytest.raises(ConfigError, match="which does not exist here") as info:
        run_worker("m", url, 2)
    assert repr(str(model.resolve())) in str(info.value)
    capsys.readouterr()
    assert main(["search", "worker", "--study", "m", "--storage", url, "--trials", "2"]) == 2
    assert "which does not exist here" in capsys.readouterr().err

    slim_io.save(build_model("lenet300", image_size=8, seed=1), model)  # same path, other weights
    with pytest.raises(ConfigError, match="has changed since the study was created") as info:
        run_worker("m", url, 2)
    assert repr(str(model.resolve())) in str(info.value)

    assert len(optuna.load_study(study_name="m", storage=url).trials) == 1
    assert not out.exists()
