"""The built-in data sets: MNIST from its IDX folder, scikit-learn's digits, a synthetic set.

Each returns a `Dataset` of float32 images shaped (n, 1, side, side), standardised with the training mean and std
(one scalar each, as the paper's code did), and int64 labels.
"""
from __future__ import annotations

import os

import numpy as np

from workers.data.dataset import NUM_CLASSES, DataError, DataFacts, Dataset, StoredTrain, standardise
from workers.data.idx import inspect_mnist_folder, read_mnist_folder

MNIST_DEV_SIZE = 10000  # held out from the training images, as in the paper


def check_dev_size(name: str, dev_size: int, n: int) -> None:
    if not 1 <= dev_size < n:
        raise DataError(f"data.dev_size: {dev_size} must be at least 1 and below the {n} training images of {name}")


def shuffled(n: int, seed: int) -> np.ndarray:
    """The seeded order of n training images: the first dev_size of it are held out as dev."""
    return np.random.default_rng(seed).permutation(n)


def split_and_standardise(
    name: str, images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
    dev_size: int, seed: int,
) -> Dataset:
    """Seeded shuffle, the first dev_size as dev, pixels standardised with the training mean and std."""
    n = len(images)
    check_dev_size(name, dev_size, n)
    order = shuffled(n, seed)
    stored_x, stored_y = images[order], labels[order]
    x = stored_x.astype(np.float32)
    y = stored_y.astype(np.int64)
    x_dev, y_dev, x_train, y_train = x[:dev_size], y[:dev_size], x[dev_size:], y[dev_size:]
    mean, std = float(x_train.mean()), float(x_train.std())
    std = std if std > 0 else 1.0
    stored = StoredTrain(np.ascontiguousarray(stored_x[dev_size:]), np.ascontiguousarray(stored_y[dev_size:]),
                         mean, std)  # what a worker that cannot read the set on its node is sent
    return Dataset(name, standardise(x_train, mean, std), y_train, standardise(x_dev, mean, std), y_dev,
                   standardise(test_images, mean, std), test_labels.astype(np.int64), stored)


def load_mnist(folder: str | os.PathLike[str], dev_size: int = MNIST_DEV_SIZE, seed: int = 100) -> Dataset:
    a = read_mnist_folder(folder)
    return split_and_standardise("mnist", a["train_images"], a["train_labels"], a["test_images"],
                                 a["test_labels"], dev_size, seed)


def load_digits(dev_size: int | None = None, seed: int = 100) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): 300 held out as test, then dev from the rest."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed + 1).permutation(len(images))
    test, rest = order[:300], order[300:]
    dev = dev_size if dev_size is not None else len(rest) // 5
    return split_and_standardise("digits", images[rest], labels[rest], images[test], labels[test], dev, seed)


def make_synthetic(n: int = 1200, side: int = 16, dev_size: int | None = None, seed: int = 100) -> Dataset:
    """Ten classes of noisy 16x16 prototype images: learnable in seconds, big enough for the ConvNet."""
    rng = np.random.default_rng(seed + 2)
    prototypes = rng.normal(0.0, 1.0, size=(NUM_CLASSES, side, side)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=n + 200)
    images = prototypes[labels] + rng.normal(0.0, 1.5, size=(n + 200, side, side)).astype(np.float32)
    dev = dev_size if dev_size is not None else n // 5
    return split_and_standardise("synthetic", images[:n], labels[:n], images[n:], labels[n:], dev, seed)


def default_mnist_dir() -> str | None:
    return os.environ.get("HES_MNIST_DIR")


def mnist_folder(path: str | None) -> str:
    folder = path or default_mnist_dir()
    if not folder:
        raise DataError("data.path: not set and $HES_MNIST_DIR is empty; point it at the MNIST IDX folder")
    return folder


def describe_mnist(path: str | None, dev_size: int | None, seed: int) -> DataFacts:
    """What load_mnist would give, from the IDX files' headers and the labels, no image read."""
    folder = mnist_folder(path)
    info = inspect_mnist_folder(folder)
    dev = dev_size if dev_size is not None else MNIST_DEV_SIZE
    check_dev_size("mnist", dev, info.n_train)
    labels = read_mnist_folder(folder, keys=("train_labels", "test_labels"))
    y = labels["train_labels"][shuffled(info.n_train, seed)].astype(np.int64)
    return DataFacts("mnist", info.rows, y[dev:], y[:dev], labels["test_labels"].astype(np.int64))
