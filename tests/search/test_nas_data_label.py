"""`nas(data, cfg)` records the data it trained on, not cfg.dataset (which nothing loaded), and
a worker refuses a study whose data is in memory rather than loading cfg.dataset instead."""

import dataclasses

import pytest

from slimkit.data import from_tensors
from slimkit.errors import ConfigError
from slimkit.search import NASConfig, SearchSpace, nas
from slimkit.search.study import load_task
from slimkit.search.worker import run_worker

TINY = SearchSpace({"depth": (1,), "width": (8,), "kernel": (3,), "block": ("plain",)})
CFG = NASConfig(epochs=1, n_trials=1, strategy="random")  # dataset: the default, "digits"


def _tensors(digits, name):
    x, y = digits.test.dataset.tensors  # 360 digits images, here as someone's own data
    return from_tensors(x[:300], y[:300], x[300:], y[300:], name=name, num_classes=10)


def test_nas_records_the_name_of_the_data_it_was_given(digits, tmp_path):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    mine = _tensors(digits, "my-scans")
    nas(mine, CFG, space=TINY, storage=url, study_name="s")
    assert load_task("s", url)["config"]["dataset"] == "my-scans"
    with pytest.raises(ConfigError, match=r"in-memory data 'my-scans'.*nas\(data, cfg"):
        run_worker("s", url, 2)
    # a packaged dataset passed in is recorded by its name: the same task as loading it by name
    nas(
        digits, dataclasses.replace(CFG, dataset="mnist5k"), space=TINY, storage=url, study_name="d"
    )
    assert load_task("d", url)["config"]["dataset"] == "digits"
