import pytest

from slimkit.errors import ConfigError
from slimkit.export import slimformat
from slimkit.models import build_model
from slimkit.search.autocompress import AutoCompressConfig, auto_compress
from slimkit.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained():
    from slimkit.data import load_dataset

    data = load_dataset("digits")
    model = build_model("lenet300", image_size=8, seed=0)
    train(model, data, TrainConfig(epochs=2, lr=3e-3))
    return model, data


def test_budget_is_required_and_validated():
    with pytest.raises(ConfigError, match="needs a budget"):
        AutoCompressConfig()
    with pytest.raises(ConfigError, match=r"bits\[\] must be in 1..8, but got 9"):
        AutoCompressConfig(max_bytes=1000, bits=(4, 9))


def test_meets_a_loose_budget_and_saves_the_real_artifact(trained, tmp_path):
    model, data = trained
    cfg = AutoCompressConfig(
        max_bytes=200_000,
        max_accuracy_drop=0.2,
        n_trials=2,
        max_batches=3,
        sparsities=(0.5, 0.8),
        bits=(4, 6),
    )
    res = auto_compress(model, data, cfg, tmp_path, storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert res.met and "met the goal" in res.message
    best = tmp_path / "best.slim"
    assert best.stat().st_size == res.best["bytes"] <= 200_000
    loaded = slimformat.load(best)
    from slimkit.training import evaluate_accuracy

    assert evaluate_accuracy(loaded, data.test) == pytest.approx(res.best["accuracy"], abs=1e-9)


def test_impossible_budget_still_saves_the_closest_and_says_by_how_much(trained, tmp_path):
    model, data = trained
    cfg = AutoCompressConfig(max_bytes=100, n_trials=2, max_batches=2, sparsities=(0.9,), bits=(2,))
    res = auto_compress(model, data, cfg, tmp_path, storage=f"sqlite:///{tmp_path / 'b.db'}")
    assert not res.met
    assert "missed bytes by" in res.message
    assert (tmp_path / "best.slim").exists() and res.best["miss"]["bytes"] == res.best[
        "bytes"
    ] - 100
