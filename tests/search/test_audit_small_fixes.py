"""Small search fixes: the accuracy gate's float tolerance and its units, an 'accuracy, bytes'
hpo without a compression knob, and the worker's trial count."""

import numpy as np
import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import hpo
from slimkit.search.autocompress import AutoCompressConfig, describe_miss, shortfall
from slimkit.search.hpo import HPOConfig


def test_a_drop_of_exactly_the_limit_meets_it_despite_float32_accuracies():
    # evaluate_accuracy returns float32 means: 0.97 - 0.965 is 0.5000055 pp in float32
    dense, acc = float(np.float32(0.97)), float(np.float32(0.965))
    assert 100 * (dense - acc) > 0.5
    cfg = AutoCompressConfig(max_bytes=1000, max_accuracy_drop=0.005)
    row = {"bytes": 1000.0, "accuracy": acc}
    assert shortfall(row, cfg, dense) == {"bytes": 0.0, "latency_ms": 0.0, "accuracy_pp": 0.0}
    # one sample of a 2,000-sample test set over the limit is still a miss
    over = {"bytes": 1000.0, "accuracy": float(np.float32(0.9645))}
    assert shortfall(over, cfg, dense)["accuracy_pp"] == pytest.approx(0.05, abs=1e-4)


def test_a_miss_names_its_units():
    text = describe_miss({"bytes": 1204.0, "latency_ms": 0.52, "accuracy_pp": 0.31})
    assert text == (
        "the size budget by 1,204 bytes, the latency budget by 0.52 ms, "
        "the accuracy drop limit by 0.31 pp"
    )
    assert describe_miss({"bytes": 0.0, "latency_ms": 0.0, "accuracy_pp": 0.0}) == ""


def test_a_bytes_objective_without_sparsity_or_bits_is_refused():
    with pytest.raises(
        ConfigError, match=r"objective 'bytes' needs 'sparsity' or 'bits'.*\['epochs', 'lr'\]"
    ):
        HPOConfig(objectives=("accuracy", "bytes"))
    HPOConfig(objectives=("accuracy", "bytes"), space={"bits": [4, 8]})  # fine


ONE_TRIAL = HPOConfig(
    model="lenet300", space={"epochs": [1]}, n_trials=1, max_batches=2, strategy="random"
)


def test_the_worker_says_what_it_counted(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hpo(ONE_TRIAL, storage=url, study_name="s")
    capsys.readouterr()
    assert main(["search", "worker", "--study", "s", "--storage", url, "--trials", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 finished trials (2 complete, 0 pruned, 0 diverged)" in out
