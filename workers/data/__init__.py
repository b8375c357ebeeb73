"""The data a job config names (coordinator/config.py DataConfig): one dispatcher over the built-in sets
(workers/data/builtin.py, MNIST through workers/data/idx.py) and a job's own arrays (workers/data/arrays.py).

Built-in sets come standardised as (n, 1, side, side) float32 images with int64 labels, keeping their training
arrays as stored (`StoredTrain`: what a worker that cannot read the set on its node is sent); a job's own arrays
(data.dataset npz or factory) come as they are: any input shape, labels or float targets.
"""
from __future__ import annotations

from typing import Any

from workers.data.arrays import check_fit, from_arrays, load_factory_data, load_npz
from workers.data.builtin import (
    MNIST_DEV_SIZE,
    default_mnist_dir,
    describe_mnist,
    load_digits,
    load_mnist,
    make_synthetic,
    mnist_folder,
)
from workers.data.dataset import NUM_CLASSES, DataError, DataFacts, Dataset, StoredTrain, keep_classes
from workers.data.idx import MnistHeaders, idx_candidates, inspect_mnist_folder, read_bounded, read_mnist_folder

__all__ = ["MNIST_DEV_SIZE", "NUM_CLASSES", "DataError", "DataFacts", "Dataset", "MnistHeaders", "StoredTrain",
           "check_fit", "default_mnist_dir", "describe_dataset", "from_arrays", "idx_candidates",
           "inspect_mnist_folder", "keep_classes", "load_dataset", "load_digits", "load_factory_data", "load_mnist",
           "load_npz", "make_synthetic", "read_bounded", "read_mnist_folder"]

def load_dataset(dataset: str, path: str | None, dev_size: int | None, seed: int, factory: str | None = None,
                 kwargs: dict[str, Any] | None = None, loss: str = "cross_entropy") -> Dataset:
    """The data set a job config names (see coordinator/config.py DataConfig); npz and factory: a job's own
    arrays (workers/data/arrays.py), their targets checked for `loss` (train.loss)."""
    if dataset in ("npz", "factory"):
        if dataset == "npz":
            return load_npz(str(path), dev_size, seed, loss)
        return load_factory_data(str(factory), kwargs or {}, dev_size, seed, loss)
    if dataset == "mnist":
        return load_mnist(mnist_folder(path), dev_size if dev_size is not None else MNIST_DEV_SIZE, seed)
    if dataset == "digits":
        return load_digits(dev_size, seed)
    if dataset == "synthetic":
        return make_synthetic(dev_size=dev_size, seed=seed)
    raise DataError(f"data.dataset: unknown data set {dataset!r}")


def describe_dataset(dataset: str, path: str | None, dev_size: int | None, seed: int, factory: str | None = None,
                     kwargs: dict[str, Any] | None = None, loss: str = "cross_entropy") -> DataFacts:
    """What load_dataset would give, without loading MNIST's images: its sizes come from its files' headers, its
    labels from its label files. The other sets are built and described."""
    if dataset == "mnist":
        return describe_mnist(path, dev_size, seed)
    data = load_dataset(dataset, path, dev_size, seed, factory, kwargs, loss)
    return DataFacts.of(data)
