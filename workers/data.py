"""Data sets for the numerical core: MNIST from IDX files, scikit-learn's digits, a synthetic set.

All loaders return a `Dataset` of float32 images shaped (n, 1, side, side), standardised with the
training mean and std (one scalar each, as the paper's code did), and int64 labels; they also keep the training
arrays as stored (`StoredTrain`: MNIST's uint8 pixels), which is what a worker that cannot read the set on its own
node is sent. A job's own arrays (data.dataset npz or factory, workers/user_data.py) come as they are: any input
shape, labels or float targets.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# The most an IDX file may declare (decompressed; MNIST's largest declares 47,040,016 bytes). A header promising
# more is refused before any of the file is read, so a gzip bomb is never inflated.
MAX_IDX_BYTES = 1 << 30
CHUNK_BYTES = 1 << 20  # files are read and inflated this much at a time
GZIP_MIN_BYTES = 18  # a 10-byte header and an 8-byte trailer
MNIST_DEV_SIZE = 10000  # held out from the training images, as in the paper


class DataError(ValueError):
    """A data file or folder that cannot be read; the message names the file and the fault."""


@dataclass(frozen=True)
class StoredTrain:
    """The training arrays in the dtype their source stores them (MNIST's uint8 pixels and labels), and the
    standardisation that makes them the arrays a replica trains on: `(x.astype(float32) - mean) / std` shaped
    (n, 1, side, side) and int64 labels, bitwise what split_and_standardise gives. `mean` None: used as they are."""
    x: np.ndarray
    y: np.ndarray
    mean: float | None = None
    std: float = 1.0

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes)

    def take(self, idx: np.ndarray) -> StoredTrain:
        return StoredTrain(np.ascontiguousarray(self.x[idx]), np.ascontiguousarray(self.y[idx]), self.mean, self.std)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) as a replica trains on them."""
        if self.mean is None:
            return self.x, self.y
        return standardise(self.x, self.mean, self.std), self.y.astype(np.int64)


def standardise(a: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Images as float32 (n, 1, side, side), standardised with one scalar mean and std."""
    side = int(round(np.sqrt(a[0].size)))
    return np.ascontiguousarray(((a.astype(np.float32) - mean) / std).reshape(len(a), 1, side, side))


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # (n_train, 1, side, side) float32
    y_train: np.ndarray  # (n_train,) int64
    x_dev: np.ndarray
    y_dev: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    stored: StoredTrain | None = None  # the training arrays as stored; None: x_train and y_train are

    @property
    def stored_train(self) -> StoredTrain:
        return self.stored or StoredTrain(self.x_train, self.y_train)

    @property
    def image_side(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.x_train, self.y_train, self.x_dev, self.y_dev, self.x_test, self.y_test))


def idx_candidates(folder: Path) -> list[Path]:
    """Every file name the loader may open in an MNIST folder, in the order it tries them (.gz first)."""
    return [folder / name for stem in IDX_FILES.values() for name in (f"{stem}.gz", stem)]


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / stem}(.gz): missing")


def _pieces(path: Path, limit: int) -> Iterator[bytes]:
    """The file's bytes (decompressed for .gz) in pieces of at most CHUNK_BYTES, stopping after `limit`:
    a gzip bomb is never inflated beyond the limit, and never more than one piece of it is held."""
    with path.open("rb") as f:
        if path.suffix != ".gz":
            while limit > 0 and (piece := f.read(min(CHUNK_BYTES, limit))):
                limit -= len(piece)
                yield piece
            return
        inflate = zlib.decompressobj(wbits=31)  # one gzip member
        pending, at_end = b"", False
        while limit > 0 and not inflate.eof:
            if not pending:
                pending = f.read(CHUNK_BYTES)
                at_end = not pending  # then decompress(b"") still drains what zlib holds back
            piece = inflate.decompress(pending, min(CHUNK_BYTES, limit))
            pending = inflate.unconsumed_tail
            if not piece and at_end:
                return  # the stream ends early: the caller sees fewer bytes than it asked for
            limit -= len(piece)
            yield piece


def read_bounded(path: Path, limit: int) -> bytearray:
    """At most `limit` bytes of the file, decompressed for .gz; DataError naming the file if it cannot be read."""
    out = bytearray()
    try:
        for piece in _pieces(path, limit):
            out += piece
    except (OSError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read: {err}") from None
    return out


def _stored_size(path: Path) -> int:
    """The file's size; for .gz the gzip trailer's ISIZE (the decompressed size mod 2^32), read without inflating."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if path.suffix != ".gz":
                return size
            if size < GZIP_MIN_BYTES:
                raise DataError(f"{path}: cannot be read: {size} bytes is too short for a gzip file")
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
            return int(isize)
    except OSError as err:
        raise DataError(f"{path}: cannot be read: {err}") from None


@dataclass(frozen=True)
class IdxHeader:
    """One IDX file as its 8- or 16-byte header declares it; `nbytes` is the whole (decompressed) file."""
    path: Path
    dims: tuple[int, ...]

    @property
    def header_bytes(self) -> int:
        return 4 + 4 * len(self.dims)

    @property
    def nbytes(self) -> int:
        return self.header_bytes + math.prod(self.dims)  # Python integers: no wrap-around


def read_idx_header(path: Path, magic: int, max_bytes: int = MAX_IDX_BYTES) -> IdxHeader:
    """Read only the header of an IDX file (streaming for .gz) and check it against the file's stored size.

    Refuses images that are not square or smaller than 1x1, and a declared size above max_bytes."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    data = read_bounded(path, header)
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found:#010x}, expected {magic:#010x}")
    head = IdxHeader(path, struct.unpack(f">{ndim}I", data[4:header]))
    if ndim == 3:
        n, rows, cols = head.dims
        if rows < 1 or cols < 1:
            raise DataError(f"{path}: images of {rows}x{cols} pixels; they must be at least 1x1")
        if rows != cols:
            raise DataError(f"{path}: images of {rows}x{cols} pixels are not square")
    if head.dims[0] < 1:
        raise DataError(f"{path}: holds no examples")
    if head.nbytes > max_bytes:
        raise DataError(f"{path}: the header declares {' x '.join(map(str, head.dims))} entries, "
                        f"{head.nbytes:,} bytes, above the limit of {max_bytes:,} bytes per file")
    stored = _stored_size(path)
    if path.suffix == ".gz" and stored != head.nbytes % 2**32:
        raise DataError(f"{path}: truncated or overlong: its gzip trailer gives {stored:,} bytes (mod 2^32), "
                        f"the header promises {head.nbytes:,}")
    if path.suffix != ".gz" and stored < head.nbytes:
        raise DataError(f"{path}: truncated: {stored - header} data bytes, header promises {head.nbytes - header}")
    if path.suffix != ".gz" and stored > head.nbytes:
        raise DataError(f"{path}: {stored - head.nbytes} bytes after the {head.nbytes - header} data bytes the "
                        "header promises")
    return head


def _check_labels(head: IdxHeader) -> None:
    """Stream the labels (bounded by the header's size) and refuse any above NUM_CLASSES - 1."""
    at = 0
    try:
        for piece in _pieces(head.path, head.nbytes):
            labels = np.frombuffer(piece, dtype=np.uint8)[max(0, head.header_bytes - at):]
            at += len(piece)
            if labels.size and int(labels.max()) >= NUM_CLASSES:
                raise DataError(f"{head.path}: label above {NUM_CLASSES - 1}")
    except (OSError, zlib.error) as err:
        raise DataError(f"{head.path}: cannot be read: {err}") from None
    if at < head.nbytes:
        raise DataError(f"{head.path}: truncated: {at - head.header_bytes} data bytes, header promises "
                        f"{head.nbytes - head.header_bytes}")


def _inspect(root: Path, max_bytes: int) -> dict[str, IdxHeader]:
    if not root.is_dir():
        raise DataError(f"{root}: MNIST folder missing")
    heads = {key: read_idx_header(_find_idx(root, stem), IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC,
                                  max_bytes)
             for key, stem in IDX_FILES.items()}
    train, test = heads["train_images"].dims, heads["test_images"].dims
    if train[1:] != test[1:]:
        raise DataError(f"{heads['test_images'].path}: images of {test[1]}x{test[2]} pixels, the training images "
                        f"are {train[1]}x{train[2]}")
    for split in ("train", "test"):
        n_img, n_lab = heads[f"{split}_images"].dims[0], heads[f"{split}_labels"].dims[0]
        if n_img != n_lab:
            raise DataError(f"{root}: {split} image and label counts disagree ({n_img} images, {n_lab} labels)")
        _check_labels(heads[f"{split}_labels"])
    return heads


@dataclass(frozen=True)
class MnistHeaders:
    """What an MNIST folder's four IDX files declare, checked against their sizes, without loading any image."""
    folder: Path
    n_train: int  # training images, dev not yet held out
    n_test: int
    rows: int
    cols: int


def inspect_mnist_folder(folder: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> MnistHeaders:
    """Check an MNIST folder reading only the image files' headers (the labels are small and read in full).

    For .gz only the header bytes are inflated; the gzip trailer's size must match what the header declares."""
    root = Path(folder)
    heads = _inspect(root, max_bytes)
    n_train, rows, cols = heads["train_images"].dims
    return MnistHeaders(root, n_train, heads["test_images"].dims[0], rows, cols)


def read_mnist_folder(folder: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> dict[str, np.ndarray]:
    """The four standard MNIST arrays (uint8) from a folder of IDX files, gzipped or raw.

    The headers pass inspect_mnist_folder's checks first; no file is inflated beyond what its header declares."""
    out: dict[str, np.ndarray] = {}
    for key, head in _inspect(Path(folder), max_bytes).items():
        data = read_bounded(head.path, head.nbytes)
        if len(data) < head.nbytes:
            raise DataError(f"{head.path}: truncated: {len(data) - head.header_bytes} data bytes, header promises "
                            f"{head.nbytes - head.header_bytes}")
        out[key] = np.frombuffer(data, dtype=np.uint8, offset=head.header_bytes).reshape(head.dims)
    return out


def _check_dev_size(name: str, dev_size: int, n: int) -> None:
    if not 1 <= dev_size < n:
        raise DataError(f"data.dev_size: {dev_size} must be at least 1 and below the {n} training images of {name}")


def split_and_standardise(
    name: str, images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
    dev_size: int, seed: int,
) -> Dataset:
    """Seeded shuffle, the first dev_size as dev, pixels standardised with the training mean and std."""
    n = len(images)
    _check_dev_size(name, dev_size, n)
    order = np.random.default_rng(seed).permutation(n)
    stored_x, stored_y = images[order], labels[order]
    x = stored_x.astype(np.float32)
    y = stored_y.astype(np.int64)
    x_dev, y_dev, x_train, y_train = x[:dev_size], y[:dev_size], x[dev_size:], y[dev_size:]
    mean, std = float(x_train.mean()), float(x_train.std())
    std = std if std > 0 else 1.0
    stored = StoredTrain(np.ascontiguousarray(stored_x[dev_size:]), np.ascontiguousarray(stored_y[dev_size:]),
                         mean, std)
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


def keep_classes(data: Dataset, classes: list[int]) -> Dataset:
    """Only the examples of these labels, in train, dev and test, their label values unchanged (the model keeps
    its ten outputs, so a model trained on some digits can be fine-tuned on all). The pixels stay standardised
    with the whole training set's mean and std, so the same image means the same input in both jobs."""
    keep = np.asarray(sorted(classes), dtype=np.int64)
    stored = None
    if data.y_train.ndim != 1 or not np.issubdtype(data.y_train.dtype, np.integer):
        raise DataError(f"data.classes: {data.name} has no single integer label per example to keep by")
    out = {}
    for split in ("train", "dev", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        mask = np.isin(y, keep)
        if split == "train" and not mask.any():
            raise DataError(f"data.classes: no training example of {data.name} has a label in {sorted(classes)}")
        out[f"x_{split}"], out[f"y_{split}"] = np.ascontiguousarray(x[mask]), y[mask]
        if split == "train" and data.stored is not None:
            stored = data.stored.take(np.flatnonzero(mask))
    return Dataset(data.name, **out, stored=stored)


def default_mnist_dir() -> str | None:
    return os.environ.get("HES_MNIST_DIR")


def _mnist_folder(path: str | None) -> str:
    folder = path or default_mnist_dir()
    if not folder:
        raise DataError("data.path: not set and $HES_MNIST_DIR is empty; point it at the MNIST IDX folder")
    return folder


def load_dataset(dataset: str, path: str | None, dev_size: int | None, seed: int, factory: str | None = None,
                 kwargs: dict[str, Any] | None = None, loss: str = "cross_entropy") -> Dataset:
    """The data set a job config names (see coordinator/config.py DataConfig); npz and factory: a job's own
    arrays (workers/user_data.py), their targets checked for `loss` (train.loss)."""
    if dataset in ("npz", "factory"):
        from workers.user_data import load_factory_data, load_npz

        if dataset == "npz":
            return load_npz(str(path), dev_size, seed, loss)
        return load_factory_data(str(factory), kwargs or {}, dev_size, seed, loss)
    if dataset == "mnist":
        return load_mnist(_mnist_folder(path), dev_size if dev_size is not None else MNIST_DEV_SIZE, seed)
    if dataset == "digits":
        return load_digits(dev_size, seed)
    if dataset == "synthetic":
        return make_synthetic(dev_size=dev_size, seed=seed)
    raise DataError(f"data.dataset: unknown data set {dataset!r}")


@dataclass(frozen=True)
class DataFacts:
    """The sizes of the data set a job config names, as admission needs them (no arrays kept)."""
    name: str
    n_train: int  # after dev_size is held out
    n_dev: int
    n_test: int
    image_side: int


def describe_dataset(dataset: str, path: str | None, dev_size: int | None, seed: int, factory: str | None = None,
                     kwargs: dict[str, Any] | None = None, loss: str = "cross_entropy") -> DataFacts:
    """What load_dataset would give, without loading MNIST: its sizes come from inspect_mnist_folder.
    digits and synthetic are small and built in memory, so they are built and measured."""
    if dataset == "mnist":
        info = inspect_mnist_folder(_mnist_folder(path))
        dev = dev_size if dev_size is not None else MNIST_DEV_SIZE
        _check_dev_size("mnist", dev, info.n_train)
        return DataFacts("mnist", info.n_train - dev, dev, info.n_test, info.rows)
    data = load_dataset(dataset, path, dev_size, seed, factory, kwargs, loss)
    return DataFacts(data.name, len(data.x_train), len(data.x_dev), len(data.x_test), data.image_side)
