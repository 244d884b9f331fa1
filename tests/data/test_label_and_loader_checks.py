"""Labels must be (N,) class indices; user loaders, num_classes and sample counts are checked."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from slimkit.data import DataBundle, from_loaders, from_tensors, load_corpus, load_dataset
from slimkit.data.unlabelled_text import load_unlabelled_text
from slimkit.errors import ConfigError
from slimkit.models import build_model
from slimkit.training import TrainConfig, evaluate_accuracy, train


def _xy(n: int = 20):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(
    ("shape_of", "fix"),
    [(lambda y: y[:, None], r"y\.squeeze\(1\)"), (lambda y: torch.eye(10)[y], r"y\.argmax\(1\)")],
)
def test_labels_with_a_second_dimension_are_refused(shape_of, fix):
    # (N, 1) labels were compared with (N,) predictions by broadcasting (accuracy ~0.1), and
    # one-hot rows counted as 2 classes.
    x, y = _xy()
    with pytest.raises(ConfigError, match=rf"train labels must have shape \(N,\).*{fix}"):
        from_tensors(x, shape_of(y), x, y)
    with pytest.raises(ConfigError, match=rf"test labels must have shape \(N,\).*{fix}"):
        from_tensors(x, y, x, shape_of(y))


def test_accuracy_refuses_labels_of_the_wrong_shape():
    x, y = _xy()
    model = build_model("lenet300", image_size=8, seed=0).eval()
    loader = DataLoader(TensorDataset(x, y[:, None]), batch_size=8)
    with pytest.raises(ConfigError, match=r"labels of shape \(N,\).*\(20, 1\).*y\.squeeze\(1\)"):
        evaluate_accuracy(model, loader)


def test_from_loaders_refuses_empty_loaders_and_bad_num_classes():
    x, y = _xy()
    good = DataLoader(TensorDataset(x, y), batch_size=8)
    dropped = DataLoader(TensorDataset(x, y), batch_size=64, drop_last=True)  # len 0
    with pytest.raises(ConfigError, match=r"train loader has no batch.*drop_last=True"):
        from_loaders(dropped, good, num_classes=10)
    empty = DataLoader(TensorDataset(x[:0], y[:0]), batch_size=8)
    with pytest.raises(ConfigError, match="test loader has no batch"):
        from_loaders(good, empty, num_classes=10)  # was a bare StopIteration
    for bad in (0, "10", 2.0, True):
        with pytest.raises(ConfigError, match="num_classes must be an integer in 1..100000"):
            from_loaders(good, good, num_classes=bad)
    with pytest.raises(ConfigError, match=r"labels must be class indices in 0..4"):
        from_loaders(good, good, num_classes=5)
    column = DataLoader(TensorDataset(x, y[:, None]), batch_size=8)
    with pytest.raises(ConfigError, match=r"train loader's labels must have shape \(N,\)"):
        from_loaders(column, good, num_classes=10)
    bundle = from_loaders(good, good, num_classes=np.int64(10))
    assert bundle.num_classes == 10 and type(bundle.num_classes) is int


def test_from_loaders_keeps_a_shuffled_loaders_order():
    x, y = _xy(64)
    order = []
    for peek in (False, True):
        loader = DataLoader(
            TensorDataset(x, y),
            batch_size=8,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
        )
        torch.manual_seed(0)
        if peek:
            from_loaders(loader, loader, num_classes=10)
        order.append([torch.randn(1), next(iter(loader))[1]])
    assert torch.equal(order[0][0], order[1][0]) and torch.equal(order[0][1], order[1][1])


def test_train_refuses_a_loader_without_a_batch():
    # A bundle whose train loader became empty (drop_last) trained 0 steps and returned the
    # untrained model as if it had trained.
    x, y = _xy()
    bundle = from_tensors(x, y, x, y)
    bundle.train = DataLoader(TensorDataset(x, y), batch_size=64, drop_last=True)
    model = build_model("lenet300", image_size=8, seed=0)
    with pytest.raises(ConfigError, match=r"training loader yields no batch.*epochs=0"):
        train(model, bundle, TrainConfig(epochs=1))
    train(model, bundle, TrainConfig(epochs=0))  # nothing to train: fine


def test_train_refuses_label_columns_of_a_hand_built_bundle():
    # from_tensors/from_loaders refuse (N, 1) labels, but a DataBundle built by hand carried
    # them into train(): torch's cross_entropy error, or with a custom loss an (N, 1) column
    # broadcast against the (N,) predictions (accuracy ~0.1).
    x, y = _xy()
    good = from_tensors(x, y, x, y)
    column = DataLoader(TensorDataset(x, y[:, None]), batch_size=8)
    bundle = DataBundle("hand", column, good.test, column, (1, 8, 8), 10)
    model = build_model("lenet300", image_size=8, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ConfigError,
        match=r"^train: the training loader's labels must have shape \(N,\), one class index "
        r"per sample, but got shape \(8, 1\); squeeze the column: y\.squeeze\(1\)$",
    ):
        train(model, bundle, TrainConfig(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step ran

    # A stream without a length is not read ahead by from_loaders: train checks it as it reads.
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y[:, None]))

    streamed = from_loaders(DataLoader(Stream(), batch_size=8), good.test, num_classes=10)
    with pytest.raises(ConfigError, match=r"^finetune: the training loader's labels .* \(8, 1\)"):
        train(model, streamed, TrainConfig(epochs=1, max_batches=2), description="finetune")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sample_counts_above_the_split_are_refused():
    with pytest.raises(ConfigError, match=r"train_samples must be at most 1,437.*got 5,000"):
        load_dataset("digits", train_samples=5000)  # was cut to 1,437 without a word
    with pytest.raises(ConfigError, match=r"test_samples must be at most 360"):
        load_dataset("digits", test_samples=361)
    assert len(load_dataset("digits", train_samples=1437, test_samples=360).test.dataset) == 360


@pytest.mark.parametrize("load", [load_corpus, lambda limit: load_unlabelled_text(limit=limit)])
def test_text_limit_is_none_or_at_least_one(load):
    every = load(None)
    assert load(3) == every[:3]
    for bad in (0, -1, 2.5, True):  # 0 returned every line, -1 dropped the last one
        with pytest.raises(ConfigError, match=r"limit must be an integer >= 1.*or None"):
            load(bad)
