"""Datasets: mnist5k, digits, a small English corpus, and user tensors or loaders."""

from slimkit.data.datasets import (
    DataBundle,
    dataset_names,
    from_loaders,
    from_tensors,
    load_dataset,
)
from slimkit.data.text import load_corpus

__all__ = [
    "DataBundle",
    "dataset_names",
    "from_loaders",
    "from_tensors",
    "load_corpus",
    "load_dataset",
]
