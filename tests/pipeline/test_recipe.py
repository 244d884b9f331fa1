"""Recipe schema: exact YAML round trip, and one-paragraph errors naming stage, key, value, choices."""

import pytest
import yaml

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.pipeline import from_yaml, parse_recipe
from slimkit.pipeline.recipe import apply_overrides


def test_round_trip_is_exact(tiny):
    r = parse_recipe(tiny(max_accuracy_drop=0.5))
    again = from_yaml(r.to_yaml())
    assert again == r
    assert again.to_yaml() == r.to_yaml()
    assert again.digest() == r.digest()


def test_examples_parse_and_round_trip():
    import pathlib

    from slimkit.pipeline import load_recipe

    paths = sorted(pathlib.Path("examples").glob("*.yaml"))
    assert len(paths) >= 2
    for p in paths:
        if p.name == "minilm.yaml":
            continue
        try:
            r = load_recipe(p)
        except ConfigError as exc:  # an example whose technique family has not landed yet
            if "not installed" in str(exc) or "No module named" in str(exc):
                continue
            raise
        assert from_yaml(r.to_yaml()) == r


@pytest.mark.parametrize(
    "change, expect",
    [
        (
            {"stages": [{"trian": {}}]},
            ["stages[0]", "'trian'", "did you mean 'train'", "valid kinds"],
        ),
        ({"modle": {"zoo": "lenet5"}}, ["unknown key 'modle'", "did you mean 'model'"]),
        ({"data": {"dataset": "digits", "batchsize": 3}}, ["data.batchsize", "batch_size"]),
        ({"seed": "abc"}, ["seed", "'abc'"]),
        (
            {"stages": [{"train": {"epochs": 1, "lrr": 0.1}}]},
            ["stages[0].train", "lrr", "valid options"],
        ),
        ({"stages": [{"train": {"epochs": -1}}]}, ["stages[0].train", "epochs", "-1"]),
        (
            {"stages": [{"prune": {"method": "magnitud"}}]},
            ["stages[0].prune", "'magnitud'", "magnitude"],
        ),
        (
            {"stages": [{"export": {}}, {"prune": {"method": "magnitude", "sparsity": 1.5}}]},
            ["stages[1].prune", "sparsity", "1.5"],
        ),
        ({"stages": [{"export": {"formats": ["zip"]}}]}, ["stages[0].export", "'zip'", "slim"]),
        (
            {"stages": [{"export": {"dir": "../../etc"}}]},
            ["stages[0].export", "inside the output folder"],
        ),
        ({"data": None}, ["stages[0].train", "needs training or calibration data", "data: null"]),
        (
            {
                "data": None,
                "stages": [
                    {"decompose": {"method": "svd", "recovery": {"mode": "distill", "epochs": 1}}}
                ],
            },
            ["stages[0].decompose", "needs training or calibration data"],
        ),
        # refused only when the run reached it, after the stages before it
        ({"stages": [{"distill": {}}]}, ["stages[0].distill", "needs a trained teacher"]),
        # train after quantize moved the weights off their grid silently; finetune, prune,
        # decompose and distill were refused only when the run reached them
        (
            {"stages": [{"train": {}}, {"quantize": {"method": "kmeans"}}, {"train": {}}]},
            ["stages[2].train comes after stages[1].quantize (kmeans)", "train before"],
        ),
        (
            {
                "stages": [
                    {"train": {}},
                    {"quantize": {"method": "linear", "bits": 4}},
                    {"export": {}},
                    {"finetune": {}},
                ]
            },
            ["stages[3].finetune comes after stages[1].quantize", "fine-tune before quantizing"],
        ),
        # `train:` / `losses:` left empty were TypeErrors from inside the parser
        (
            {"stages": [{"train": {}}, {"distill": {"train": None}}]},
            ["stages[1].distill", "train must be a mapping", "None"],
        ),
        (
            {"stages": [{"train": {}}, {"distill": {"losses": None}}]},
            ["stages[1].distill", "losses must be a list"],
        ),
    ],
)
def test_bad_recipes_name_stage_key_value_and_choices(tiny, change, expect):
    with pytest.raises(ConfigError) as info:
        parse_recipe(tiny(**change))
    msg = str(info.value)
    for part in expect:
        assert part in msg, (part, msg)
    assert "\n" not in msg


def test_cli_bad_input_exits_2_and_writes_nothing(tiny, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "out"
    for raw in (
        tiny(stages=[{"quantise": {}}]),
        tiny(stages=[{"export": {"dir": "/tmp/elsewhere"}}]),
    ):
        recipe.write_text(yaml.safe_dump(raw))
        assert main(["compress", str(recipe), "--out", str(out)]) == 2
        assert not out.exists()
    err = capsys.readouterr().err
    assert "slimkit: error:" in err and "Traceback" not in err
    recipe.write_text("model: [unclosed")
    assert main(["compress", str(recipe), "--out", str(out)]) == 2
    assert main(["compress", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
    assert not out.exists()


def test_overrides_reach_nested_keys_and_stage_indices(tiny):
    raw = apply_overrides(
        tiny(), ["data.train_samples=100", "stages.0.train.epochs=1", "measure.onnx=true"]
    )
    r = parse_recipe(raw)
    assert r.data.train_samples == 100 and r.stages[0]["train"]["epochs"] == 1 and r.measure.onnx
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        apply_overrides(tiny(), ["oops"])
    with pytest.raises(ConfigError, match="index"):
        apply_overrides(tiny(), ["stages.9.train.epochs=1"])


def test_missing_model_file_exits_2_and_writes_nothing(tiny, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(model={"path": str(tmp_path / "nope.safetensors")})))
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--out", str(out)]) == 2
    assert not out.exists()


def test_bad_overrides_binary_recipes_and_corrupt_state_are_errors(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="below the value 0, not a mapping"):
        apply_overrides(tiny(seed=0), ["seed.x=1"])
    with pytest.raises(ConfigError, match="below the value 0, not a mapping"):
        apply_overrides(tiny(seed=0), ["seed.x.y=1"])
    with pytest.raises(ConfigError, match="is not a YAML value"):
        apply_overrides(tiny(), ["stages=[{train"])
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    out = tmp_path / "out"
    assert main(["compress", str(binary), "--out", str(out)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err and not out.exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny()))
    out.mkdir()
    for state in ("{bad", "[1, 2]"):
        (out / "state.json").write_text(state)
        assert main(["compress", str(recipe), "--out", str(out), "--resume"]) == 2
        assert "is not a run state slimkit wrote" in capsys.readouterr().err


def test_resume_accepts_a_fix_to_the_failed_stage_but_not_to_a_finished_one(tiny, tmp_path, capsys):
    # a decompose rank past a layer's full rank fails at that stage, after training; fixing it
    # used to be refused on --resume ("different recipe"), so the training was lost
    stages = [
        {"train": {"epochs": 1, "lr": 0.003}},
        {"decompose": {"method": "svd", "rank": 100000}},
    ]
    recipe, out = tmp_path / "r.yaml", tmp_path / "out"
    recipe.write_text(yaml.safe_dump(tiny(stages=stages)))
    assert main(["compress", str(recipe), "--out", str(out)]) == 2
    assert "must be in 1..64 (its full rank), but got 100000" in capsys.readouterr().err
    stages[1] = {"decompose": {"method": "svd", "rank": 8}}
    changed_train = [{"train": {"epochs": 2, "lr": 0.003}}, stages[1]]
    recipe.write_text(yaml.safe_dump(tiny(stages=changed_train)))
    assert main(["compress", str(recipe), "--out", str(out), "--resume"]) == 2
    assert "resume only allows changes from stages[1] on" in capsys.readouterr().err
    recipe.write_text(yaml.safe_dump(tiny(stages=stages)))
    assert main(["compress", str(recipe), "--out", str(out), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_compress_refuses_a_folder_of_the_users_files(tiny, tmp_path, capsys):
    recipe, out = tmp_path / "r.yaml", tmp_path / "mine"
    recipe.write_text(yaml.safe_dump(tiny()))
    out.mkdir()
    (out / "model.onnx").write_text("the user's own model")
    assert main(["compress", str(recipe), "--out", str(out)]) == 2
    assert "already holds files slimkit did not write (model.onnx)" in capsys.readouterr().err
    assert (out / "model.onnx").read_text() == "the user's own model"
    # a checkpoints/ folder or a metrics.json of the user's own is no proof of a slimkit run:
    # the run deleted checkpoints/ and replaced model.onnx
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "best_epoch_90.pt").write_text("the user's weights")
    (out / "metrics.json").write_text("{}")
    assert main(["compress", str(recipe), "--out", str(out)]) == 2
    assert (out / "checkpoints" / "best_epoch_90.pt").exists()
    capsys.readouterr()
    run = tmp_path / "run"  # a slimkit run folder may be written again
    assert main(["compress", str(recipe), "--out", str(run)]) == 0
    (run / "checkpoints" / "mine.txt").write_text("kept")
    assert main(["compress", str(recipe), "--out", str(run)]) == 0
    assert (run / "checkpoints" / "mine.txt").exists()


def test_a_folder_given_as_the_recipe_is_named_a_folder(tmp_path, capsys):
    assert main(["compress", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder; pass the path of a YAML recipe" in capsys.readouterr().err


def test_a_trained_model_file_is_the_distillation_teacher(tiny, tmp_path):
    import json

    import slimkit as sk
    from slimkit.pipeline import compress

    teacher = sk.build_model("lenet300", image_size=8)
    sk.save(teacher, tmp_path / "trained.safetensors")
    stages = [
        {"prune": {"method": "magnitude", "sparsity": 0.5}},
        {"distill": {"train": {"epochs": 1}}},  # was refused: "add a train stage before it"
    ]
    r = parse_recipe(tiny(model={"path": str(tmp_path / "trained.safetensors")}, stages=stages))
    with pytest.raises(KeyboardInterrupt):  # stops after the prune stage, as a crash would
        compress(r, tmp_path / "run", log=lambda s: None, stop_after=0)
    compress(r, tmp_path / "run", resume=True, log=lambda s: None)  # the teacher is reloaded
    gate = json.loads((tmp_path / "run" / "metrics.json").read_text())["gate"]
    assert gate["reference_stage"] == -1  # the input model's row
    student = sk.load(tmp_path / "run" / "checkpoints" / "stage_1.safetensors")
    assert float((student.fc1.weight == 0).float().mean()) >= 0.5  # distillation kept the zeros


def test_an_int8_dynamic_model_exports_as_int8_onnx_in_a_recipe(tiny, tmp_path):
    import json

    from slimkit.pipeline import compress

    stages = [
        {"train": {"epochs": 1}},
        {"quantize": {"method": "int8-dynamic"}},
        {"export": {"formats": ["onnx-int8"]}},  # refused as "already holds int8 layers"
    ]
    compress(parse_recipe(tiny(stages=stages)), tmp_path / "run", log=lambda s: None)
    arts = json.loads((tmp_path / "run" / "metrics.json").read_text())["artifacts"]
    assert arts["onnx-int8"]["bytes"] > 0


# ---- the recipe's seed reaches nested training; stages that read data need data -------------

GRADUAL = {"method": "gradual", "final_sparsity": 0.5, "steps": 2}
SVD_RECOVERY = {"method": "svd", "ratio": 0.5, "recovery": {"mode": "finetune"}}
NESTED_TRAINING = {
    "gradual finetune": ({"prune": {**GRADUAL, "finetune": {"epochs": 1}}}, "finetune"),
    "gradual default finetune": ({"prune": GRADUAL}, "finetune"),
    "slimming train": ({"prune": {"method": "slimming", "train": {"epochs": 1}}}, "train"),
    "gates default train": ({"prune": {"method": "gates"}}, "train"),
    "qat train": ({"quantize": {"method": "qat", "train": {"epochs": 1}}}, "train"),
    "svd recovery": ({"decompose": SVD_RECOVERY}, "recovery"),
}


@pytest.mark.parametrize("stage, field", list(NESTED_TRAINING.values()), ids=list(NESTED_TRAINING))
def test_the_recipe_seed_reaches_nested_training_configs(tiny, stage, field):
    # train_loop reseeds from its config's seed, so a nested default of 0 ignored `seed:`
    def nested_seed(seed):
        recipe = parse_recipe(tiny(seed=seed, stages=[{"train": {"epochs": 1}}, stage]))
        return getattr(recipe.validate_stages()[1].config, field).seed

    assert [nested_seed(s) for s in (0, 1, 5)] == [0, 1, 5]


def test_the_recipe_seed_reaches_kmeans_centroid_finetuning(tiny):
    # KMeansQuantization built its fine-tuning TrainConfig with no seed: always seed 0.
    def finetune_seed(seed, **opts):
        stage = {"quantize": {"method": "kmeans", "finetune_epochs": 1, **opts}}
        recipe = parse_recipe(tiny(seed=seed, stages=[{"train": {"epochs": 1}}, stage]))
        return recipe.validate_stages()[1].config.finetune_seed

    assert [finetune_seed(s) for s in (0, 1, 5)] == [0, 1, 5]
    assert finetune_seed(3, finetune_seed=7) == 7  # set in the stage: it wins


def test_a_nested_seed_set_in_the_stage_wins_and_nested_defaults_stay(tiny):
    from slimkit.training import TrainConfig

    stage = {"prune": {**GRADUAL, "finetune": {"epochs": 2, "seed": 7}}}
    plan = parse_recipe(tiny(seed=3, stages=[{"train": {}}, stage])).validate_stages()[1]
    assert plan.config.finetune == TrainConfig(epochs=2, seed=7)
    stage = {"prune": {"method": "gates"}}
    plan = parse_recipe(tiny(seed=3, stages=[{"train": {}}, stage])).validate_stages()[1]
    assert plan.config.train == TrainConfig(epochs=1, lr=1e-2, seed=3)  # the class default


DATA_READING = {
    "channel taylor": {"prune": {"method": "channel", "criterion": "taylor"}},
    "channel activation": {"prune": {"method": "channel", "criterion": "activation"}},
    "channel apoz": {"prune": {"method": "channel", "criterion": "apoz"}},
    "gradual taylor": {
        "prune": {**GRADUAL, "criterion": "taylor", "finetune": {"epochs": 0}, "recovery_epochs": 0}
    },
    "gradual recovery": {"prune": {**GRADUAL, "finetune": {"epochs": 0}, "recovery_epochs": 2}},
    "kmeans finetune_epochs": {"quantize": {"method": "kmeans", "finetune_epochs": 1}},
    "slimming train": {"prune": {"method": "slimming", "train": {"epochs": 1}}},
    "int8-static": {"quantize": {"method": "int8-static"}},
    "svd recovery": {"decompose": SVD_RECOVERY},
}


@pytest.mark.parametrize("stage", list(DATA_READING.values()), ids=list(DATA_READING))
def test_stages_that_read_data_are_refused_at_load_with_data_null(tiny, stage):
    # the channel criteria, gradual taylor/recovery and k-means finetune_epochs loaded, then
    # failed mid-run, after the stages before them
    (kind,) = stage
    with pytest.raises(ConfigError, match=rf"stages\[0\]\.{kind} needs training or calibration"):
        parse_recipe(tiny(data=None, stages=[stage]))


@pytest.mark.parametrize(
    "stage",
    [
        {"prune": {"method": "channel", "criterion": "l1"}},
        {"prune": {**GRADUAL, "finetune": {"epochs": 0}, "recovery_epochs": 0}},
        {"quantize": {"method": "kmeans", "bits": 4}},
        {"decompose": {"method": "svd", "ratio": 0.5}},
    ],
)
def test_data_free_stage_configs_load_with_data_null(tiny, stage):
    parse_recipe(tiny(data=None, stages=[stage]))
