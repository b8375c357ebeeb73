"""Data sets for the numerical core: MNIST from IDX files, scikit-learn's digits, a synthetic set.

All loaders return a `Dataset` of float32 images shaped (n, 1, side, side), standardised with the
training mean and std (one scalar each, as the paper's code did), and int64 labels.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_CLASSES = 10


class DataError(ValueError):
    """A data file or folder that cannot be read; the message names the file and the fault."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # (n_train, 1, side, side) float32
    y_train: np.ndarray  # (n_train,) int64
    x_dev: np.ndarray
    y_dev: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_side(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.x_train, self.y_train, self.x_dev, self.y_dev, self.x_test, self.y_test))


def _open_idx(folder: Path, stem: str) -> tuple[Path, bytes]:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            try:
                raw = candidate.read_bytes()
                return candidate, gzip.decompress(raw) if candidate.suffix == ".gz" else raw
            except (OSError, EOFError, gzip.BadGzipFile) as err:
                raise DataError(f"{candidate}: cannot be read: {err}") from None
    raise DataError(f"{folder / stem}(.gz): missing")


def read_idx(path: Path, data: bytes, magic: int) -> np.ndarray:
    """Parse one IDX file's bytes: (n,) labels or (n, rows, cols) images, uint8."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found:#010x}, expected {magic:#010x}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header < expected:
        raise DataError(f"{path}: truncated: {len(data) - header} data bytes, header promises {expected}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def read_mnist_folder(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The four standard MNIST arrays (uint8) from a folder of IDX files, gzipped or raw."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: MNIST folder missing")
    out: dict[str, np.ndarray] = {}
    for key, stem in IDX_FILES.items():
        path, raw = _open_idx(root, stem)
        out[key] = read_idx(path, raw, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
    for split in ("train", "test"):
        n_img, n_lab = len(out[f"{split}_images"]), len(out[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(f"{root}: {split} image and label counts disagree ({n_img} images, {n_lab} labels)")
        if out[f"{split}_labels"].size and out[f"{split}_labels"].max() >= NUM_CLASSES:
            raise DataError(f"{root / IDX_FILES[split + '_labels']}: label above {NUM_CLASSES - 1}")
    return out


def split_and_standardise(
    name: str, images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
    dev_size: int, seed: int,
) -> Dataset:
    """Seeded shuffle, the first dev_size as dev, pixels standardised with the training mean and std."""
    n = len(images)
    if not 1 <= dev_size < n:
        raise DataError(f"data.dev_size: {dev_size} must be at least 1 and below the {n} training images of {name}")
    order = np.random.default_rng(seed).permutation(n)
    x = images[order].astype(np.float32)
    y = labels[order].astype(np.int64)
    x_dev, y_dev, x_train, y_train = x[:dev_size], y[:dev_size], x[dev_size:], y[dev_size:]
    mean, std = float(x_train.mean()), float(x_train.std())
    std = std if std > 0 else 1.0

    def prep(a: np.ndarray) -> np.ndarray:
        side = int(round(np.sqrt(a[0].size)))
        return np.ascontiguousarray(((a.astype(np.float32) - mean) / std).reshape(len(a), 1, side, side))

    return Dataset(name, prep(x_train), y_train, prep(x_dev), y_dev,
                   prep(test_images), test_labels.astype(np.int64))


def load_mnist(folder: str | os.PathLike[str], dev_size: int = 10000, seed: int = 100) -> Dataset:
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


def load_dataset(dataset: str, path: str | None, dev_size: int | None, seed: int) -> Dataset:
    """The data set a job config names (see coordinator/config.py DataConfig)."""
    if dataset == "mnist":
        folder = path or default_mnist_dir()
        if not folder:
            raise DataError("data.path: not set and $HES_MNIST_DIR is empty; point it at the MNIST IDX folder")
        return load_mnist(folder, dev_size if dev_size is not None else 10000, seed)
    if dataset == "digits":
        return load_digits(dev_size, seed)
    if dataset == "synthetic":
        return make_synthetic(dev_size=dev_size, seed=seed)
    raise DataError(f"data.dataset: unknown data set {dataset!r}")
