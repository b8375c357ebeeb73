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


def keep_classes(data: Dataset, classes: list[int]) -> Dataset:
    """Only the examples of these labels, in train, dev and test, their label values unchanged (the model keeps
    its ten outputs, so a model trained on some digits can be fine-tuned on all). The pixels stay standardised
    with the whole training set's mean and std, so the same image means the same input in both jobs."""
    keep = np.asarray(sorted(classes), dtype=np.int64)
    if data.y_train.ndim != 1 or not np.issubdtype(data.y_train.dtype, np.integer):
        raise DataError(f"data.classes: {data.name} has no single integer label per example to keep by")
    out = {}
    for split in ("train", "dev", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        mask = np.isin(y, keep)
        if split == "train" and not mask.any():
            raise DataError(f"data.classes: no training example of {data.name} has a label in {sorted(classes)}")
        out[f"x_{split}"], out[f"y_{split}"] = np.ascontiguousarray(x[mask]), y[mask]
    return Dataset(data.name, **out)


@dataclass(frozen=True)
class DataFacts:
    """The sizes of the data set a job config names, as admission needs them (no arrays kept)."""
    name: str
    n_train: int  # after dev_size is held out
    n_dev: int
    n_test: int
    image_side: int
