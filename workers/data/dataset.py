"""What every data loader returns: a `Dataset` of train, dev and test arrays, its sizes (`DataFacts`), its errors.

The leaf of workers/data/: the IDX reader, the built-in sets and a job's own arrays all build on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 10  # the built-in sets' classes (MNIST, digits, synthetic)


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


def class_masks(name: str, labels: dict[str, np.ndarray], classes: list[int]) -> dict[str, np.ndarray]:
    """Each split's examples whose label is in `classes` (data.classes); DataError when the labels are not one
    integer per example, or no training example is kept."""
    keep = np.asarray(sorted(classes), dtype=np.int64)
    if labels["train"].ndim != 1 or not np.issubdtype(labels["train"].dtype, np.integer):
        raise DataError(f"data.classes: {name} has no single integer label per example to keep by")
    masks = {split: np.isin(y, keep) for split, y in labels.items()}
    if not masks["train"].any():
        raise DataError(f"data.classes: no training example of {name} has a label in {sorted(classes)}")
    return masks


def keep_classes(data: Dataset, classes: list[int]) -> Dataset:
    """Only the examples of these labels, in train, dev and test, their label values unchanged (the model keeps
    its ten outputs, so a model trained on some digits can be fine-tuned on all). The pixels stay standardised
    with the whole training set's mean and std, so the same image means the same input in both jobs."""
    splits = ("train", "dev", "test")
    masks = class_masks(data.name, {s: getattr(data, f"y_{s}") for s in splits}, classes)
    out = {}
    for split in splits:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        out[f"x_{split}"], out[f"y_{split}"] = np.ascontiguousarray(x[masks[split]]), y[masks[split]]
    stored = data.stored.take(np.flatnonzero(masks["train"])) if data.stored is not None else None
    return Dataset(data.name, **out, stored=stored)


@dataclass(frozen=True)
class DataFacts:
    """The data set a job config names as admission needs it: its name, image side and labels, no inputs (MNIST's
    come from its files' headers and label files, workers/data/builtin.py describe_mnist)."""
    name: str
    image_side: int
    y_train: np.ndarray  # after dev_size is held out; the labels a dirichlet partition splits by
    y_dev: np.ndarray
    y_test: np.ndarray

    @classmethod
    def of(cls, data: Dataset) -> DataFacts:
        return cls(data.name, data.image_side, data.y_train, data.y_dev, data.y_test)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_dev(self) -> int:
        return len(self.y_dev)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def keep_classes(self, classes: list[int]) -> DataFacts:
        """The facts of keep_classes(data, classes)."""
        masks = class_masks(self.name, {"train": self.y_train, "dev": self.y_dev, "test": self.y_test}, classes)
        return DataFacts(self.name, self.image_side, self.y_train[masks["train"]], self.y_dev[masks["dev"]],
                         self.y_test[masks["test"]])
