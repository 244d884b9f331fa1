"""hpo tunes KD temperature/alpha by distilling each trial from a teacher."""

import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import HPOConfig, hpo


def test_kd_parameters_need_a_teacher():
    # they were accepted and silently ignored: every trial trained without distillation
    with pytest.raises(
        ConfigError, match=r"\['alpha', 'temperature'\] tune knowledge distillation"
    ):
        HPOConfig(space={"temperature": [2.0, 4.0], "alpha": [0.5]})
    with pytest.raises(ConfigError, match="is not an existing file"):
        HPOConfig(space={"temperature": [2.0]}, teacher="nope.safetensors")


def test_trials_distill_from_the_teacher_at_their_temperature(tmp_path, capsys):
    teacher = tmp_path / "t.safetensors"
    argv = ["train", "lenet5", "--dataset", "digits", "--epochs", "2", "--out", str(teacher)]
    assert main(argv) == 0
    cfg = HPOConfig(
        model="lenet300",
        space={"temperature": [1.0, 8.0], "alpha": {"low": 0.5, "high": 0.9}, "epochs": [1]},
        n_trials=3,
        max_batches=6,
        pruner="none",
        teacher=str(teacher),
    )
    study = hpo(cfg, storage=f"sqlite:///{tmp_path / 'h.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    assert all(t.params["temperature"] in (1.0, 8.0) for t in done)
    assert all(0.0 <= t.user_attrs["teacher_agreement"] <= 1.0 for t in done)
    # a teacher for another image size is refused before any study exists
    mnist = HPOConfig(space={"temperature": [2.0]}, teacher=str(teacher), dataset="mnist5k")
    with pytest.raises(ConfigError, match="does not run on 'mnist5k' images"):
        hpo(mnist, storage=f"sqlite:///{tmp_path / 'm.db'}")
    assert not (tmp_path / "m.db").exists()
    # the teacher retrained in place: the study resumed, mixing trials of two teachers
    argv = ["train", "lenet5", "--dataset", "digits", "--epochs", "1", "--seed", "1"]
    assert main([*argv, "--out", str(tmp_path / "t2.safetensors")]) == 0
    (tmp_path / "t2.safetensors").replace(teacher)
    more = HPOConfig.from_dict({**cfg.to_dict(), "n_trials": 4})
    with pytest.raises(ConfigError, match=r"is not the one study 'slimkit-hpo' was run with"):
        hpo(more, storage=f"sqlite:///{tmp_path / 'h.db'}")


def test_a_kd_trial_probes_its_student_once(tmp_path, probe_calls):
    # Each KD trial's distill() probed the student with check_fits and its train() probed it
    # again, the same pass on the same model and data. check_runs probes before the study
    # (its own model), each trial's new student once.
    from slimkit import io as slim_io
    from slimkit.models import build_model

    teacher = tmp_path / "t.safetensors"
    slim_io.save(build_model("lenet5", image_size=8, seed=0), teacher)
    calls = probe_calls
    cfg = HPOConfig(
        model="lenet300",
        space={"temperature": [2.0], "epochs": [1]},
        n_trials=2,
        max_batches=2,
        pruner="none",
        teacher=str(teacher),
    )
    study = hpo(cfg, storage=f"sqlite:///{tmp_path / 'h.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert calls == ["distill (student)", "distill (student)"]  # was 4: distill, then train
