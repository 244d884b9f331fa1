"""`slimkit search auto --max-latency-ms` searches SVD ranks of Linear layers by default: sparsity
and k-means bits leave the exported model's dense matmuls as they are, so without a rank knob
(the CLI had no --rank-ratios and searched full rank only) no trial could change the latency."""

import pytest

import slimkit.search.autocompress as autocompress
from slimkit import io as slim_io
from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.search.study import load_task


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "lenet300.safetensors"
    slim_io.save(build_model("lenet300", image_size=8, seed=0), path)  # weights do not matter
    return path


def auto_argv(model, tmp_path, *options):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    out = ["--out", str(tmp_path / "out"), "--storage", url, "--study", "s"]
    return ["search", "auto", str(model), "--dataset", "digits", *out, *options]


def test_a_latency_budget_searches_ranks_and_trial_0_starts_at_full_rank(model_file, tmp_path):
    budget = ["--max-latency-ms", "1000", "--max-accuracy-drop", "100", "--trials", "1"]
    assert main(auto_argv(model_file, tmp_path, *budget)) == 0
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert load_task("s", url)["config"]["rank_ratios"] == [1.0, 0.5, 0.25]
    import optuna

    params = optuna.load_study(study_name="s", storage=url).trials[0].params
    assert {k: v for k, v in params.items() if k.startswith("rank_")} == {
        "rank_fc1": 1.0,
        "rank_fc2": 1.0,
        "rank_fc3": 1.0,
    }


@pytest.mark.parametrize(
    ("options", "ranks"),
    [
        (["--max-latency-ms", "5", "--rank-ratios", "1,0.5"], (1.0, 0.5)),
        (["--max-latency-ms", "5", "--rank-ratios", "1"], (1.0,)),  # a guard, met already
        (["--max-bytes", "60000"], (1.0,)),  # a size budget alone: no rank search
    ],
)
def test_rank_ratios_given_or_not(model_file, tmp_path, monkeypatch, options, ranks):
    seen = []

    def stop(model, data, cfg, out, **kwargs):
        seen.append(cfg.rank_ratios)
        raise ConfigError("stopped before the search")

    monkeypatch.setattr(autocompress, "auto_compress", stop)
    assert main(auto_argv(model_file, tmp_path, *options)) == 2
    assert seen == [ranks]


def test_rank_ratios_that_are_not_numbers_are_refused(model_file, tmp_path, capfd):
    argv = auto_argv(model_file, tmp_path, "--max-latency-ms", "5", "--rank-ratios", "1,half")
    assert main(argv) == 2
    assert "--rank-ratios must be comma-separated numbers in (0, 1]" in capfd.readouterr().err


def test_bad_rank_ratios_are_refused_before_the_data_loads(model_file, tmp_path, monkeypatch):
    import slimkit.cli.common as common

    def no_load(*args, **kwargs):
        raise AssertionError("the data loaded before the options were checked")

    monkeypatch.setattr(common, "load_data", no_load)
    for spec in ("1,half", "1,1.5"):
        argv = auto_argv(model_file, tmp_path, "--max-latency-ms", "5", "--rank-ratios", spec)
        assert main(argv) == 2


def test_the_api_says_a_latency_budget_without_ranks_is_only_checked(tmp_path):
    cfg = autocompress.AutoCompressConfig(max_latency_ms=5.0)  # rank_ratios (1.0,)
    model = build_model("lenet300", image_size=8, seed=0)
    with (
        pytest.warns(UserWarning, match="budget is only checked.*rank_ratios=\\(1.0, 0.5, 0.25\\)"),
        pytest.raises(ConfigError),
    ):
        autocompress.auto_compress(model, "not data", cfg, tmp_path / "out")
