import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimkit.data import from_loaders, from_tensors, load_corpus, load_dataset
from slimkit.errors import ConfigError


def test_digits_shapes_and_split():
    d = load_dataset("digits", calib_samples=100)
    x, y = next(iter(d.train))
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(d.train.dataset) == 1437 and len(d.test.dataset) == 360
    assert len(d.calib.dataset) == 100 and d.num_classes == 10


def test_mnist5k_split_is_fixed():
    a = load_dataset("mnist5k", test_samples=50)
    b = load_dataset("mnist5k", test_samples=50)
    assert len(a.train.dataset) == 4000
    assert torch.equal(a.test.dataset.tensors[0], b.test.dataset.tensors[0])
    x = a.test.dataset.tensors[0]
    assert x.shape[1:] == (1, 28, 28) and abs(float(x.mean())) < 0.2


def test_unknown_dataset_and_bad_tensors():
    with pytest.raises(ConfigError, match=r"valid names are \['digits', 'mnist5k'\]"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="0 samples"):
        from_tensors(torch.zeros(0, 3), torch.zeros(0), torch.zeros(1, 3), torch.zeros(1))


def test_corpus_is_english_sentences():
    sentences = load_corpus()
    assert len(sentences) >= 1 and all(s.strip() for s in sentences)


def test_from_loaders_calibrates_on_train_never_test():
    def loader(fill: float) -> DataLoader:
        return DataLoader(TensorDataset(torch.full((8, 1, 4, 4), fill), torch.zeros(8).long()))

    train, test = loader(1.0), loader(2.0)
    bundle = from_loaders(train, test, num_classes=2)
    assert bundle.calib is train and bundle.input_shape == (1, 4, 4)
    own = loader(3.0)
    assert from_loaders(train, test, own, num_classes=2).calib is own
