"""A job's own data: a .npz file (data.dataset npz, data.path) or the arrays a function returns (data.factory).

Both hold x_train, y_train, x_test, y_test and optionally x_dev, y_dev; inputs of any shape and numeric dtype the
module takes (floating inputs become float32, integer ones, e.g. token ids, stay as they are). Targets: integer
class labels for cross_entropy (int64), numbers for mse (float32). No standardisation: the arrays are used as
given. Without x_dev, data.dev_size examples (default 20%) of the training set are held out, seeded.
Every fault is a DataError naming the field, the array and the problem.
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.data.dataset import DataError, Dataset
from workers.factories import load_factory
from workers.models import Model

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_dev", "y_dev")


def load_npz(path: str, dev_size: int | None, seed: int, loss: str = "cross_entropy") -> Dataset:
    """The data set of a .npz file (no pickled objects are read)."""
    where = f"data.path: {path}"
    if not Path(path).is_file():
        raise DataError(f"{where}: no such file")
    try:
        with zipfile.ZipFile(path):  # a .npy file would load as one unnamed array
            pass
        with np.load(path, allow_pickle=False) as f:
            names = list(f.files)
            arrays = {k: f[k] for k in names if k in REQUIRED + OPTIONAL}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{where}: cannot be read as .npz ({type(err).__name__}: {err})") from None
    for key in REQUIRED:
        if key not in arrays:
            raise DataError(f"{where}: no array {key!r} (it holds {', '.join(names) or 'none'})")
    return from_arrays(Path(path).stem, arrays, where, dev_size, seed, loss)


def load_factory_data(factory: str, kwargs: dict[str, Any], dev_size: int | None, seed: int,
                      loss: str = "cross_entropy") -> Dataset:
    """The data set a data.factory returns: a mapping of the arrays an .npz would hold."""
    where = f"data.factory: {factory}"
    fn = load_factory(factory, "data.factory")
    try:
        got = fn(**kwargs)
    except Exception as err:  # the factory's own error (a missing file, a bad kwarg), named as the job's
        raise DataError(f"{where}: {type(err).__name__}: {str(err)[:500]}") from None
    if not isinstance(got, Mapping):
        raise DataError(f"{where}: returned a {type(got).__name__}, not a mapping of arrays "
                        f"({', '.join(REQUIRED)})")
    for key in REQUIRED:
        if key not in got:
            raise DataError(f"{where}: no array {key!r} (it returned {', '.join(map(str, got)) or 'none'})")
    return from_arrays(factory.rpartition(":")[2], {k: v for k, v in got.items() if k in REQUIRED + OPTIONAL},
                       where, dev_size, seed, loss)


def _input(a: np.ndarray, key: str, where: str) -> np.ndarray:
    if a.dtype.kind == "f":
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, counted below
            a = a.astype(np.float32, copy=False)
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise DataError(f"{where}: {key} has {bad} non-finite values (nan or inf, as float32)")
    elif a.dtype.kind not in "iub":
        raise DataError(f"{where}: {key} has dtype {a.dtype}; inputs must be numbers")
    return np.ascontiguousarray(a)


def _target(a: np.ndarray, key: str, where: str, loss: str) -> np.ndarray:
    if loss == "cross_entropy":
        if a.dtype.kind not in "iu":
            raise DataError(f"{where}: {key} has dtype {a.dtype}; cross_entropy needs integer class labels "
                            "(train.loss: mse for real-valued targets)")
        if a.size and int(a.min()) < 0:
            raise DataError(f"{where}: {key} has label {int(a.min())}; class labels start at 0")
        return np.ascontiguousarray(a.astype(np.int64, copy=False))
    if a.dtype.kind not in "iuf":
        raise DataError(f"{where}: {key} has dtype {a.dtype}; mse needs numeric targets")
    with np.errstate(over="ignore"):
        a = a.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise DataError(f"{where}: {key} has {bad} non-finite values (nan or inf, as float32)")
    return np.ascontiguousarray(a)


def from_arrays(name: str, raw: Mapping[str, Any], where: str, dev_size: int | None, seed: int,
                loss: str = "cross_entropy") -> Dataset:
    """Check the arrays and split off dev when they bring none."""
    if ("x_dev" in raw) != ("y_dev" in raw):
        raise DataError(f"{where}: {'x_dev' if 'x_dev' in raw else 'y_dev'} without "
                        f"{'y_dev' if 'x_dev' in raw else 'x_dev'}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        a = np.asarray(value)
        if a.ndim == 0 or len(a) == 0:
            raise DataError(f"{where}: {key} holds no examples (shape {a.shape})")
        arrays[key] = _input(a, key, where) if key[0] == "x" else _target(a, key, where, loss)
    splits = [s for s in ("train", "dev", "test") if f"x_{s}" in arrays]
    for s in splits:
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if len(x) != len(y):
            raise DataError(f"{where}: y_{s} has {len(y)} entries, x_{s} has {len(x)}")
        for key, ref in ((f"x_{s}", "x_train"), (f"y_{s}", "y_train")):
            if arrays[key].shape[1:] != arrays[ref].shape[1:]:
                raise DataError(f"{where}: {key} has examples of shape {arrays[key].shape[1:]}, {ref} of shape "
                                f"{arrays[ref].shape[1:]}")
    x, y = arrays["x_train"], arrays["y_train"]
    if "x_dev" in arrays:
        if dev_size is not None:
            raise DataError(f"data.dev_size: {where.split(': ', 1)[1]} brings x_dev and y_dev; leave it unset")
        return Dataset(name, x, y, arrays["x_dev"], arrays["y_dev"], arrays["x_test"], arrays["y_test"])
    dev = dev_size if dev_size is not None else max(1, len(x) // 5)
    if not 1 <= dev < len(x):
        raise DataError(f"data.dev_size: {dev} must be at least 1 and below the {len(x)} training examples of {name}")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return Dataset(name, np.ascontiguousarray(x[dev:]), np.ascontiguousarray(y[dev:]), np.ascontiguousarray(x[:dev]),
                   np.ascontiguousarray(y[:dev]), arrays["x_test"], arrays["y_test"])


def check_fit(model: Model, theta: np.ndarray, data: Dataset, where: str) -> None:
    """The model's output on two training examples fits the targets: its shape, and for cross_entropy every
    split's labels below its number of classes. DataError naming the array otherwise."""
    x, y = torch.as_tensor(data.x_train[:2]), torch.as_tensor(data.y_train[:2])
    try:
        with torch.no_grad():
            out = model.forward(torch.from_numpy(theta), x)
    except Exception as err:  # whatever the module raises on an input it does not take
        raise DataError(f"{where}: the model's forward fails on x_train[:2] (shape {tuple(x.shape)}, {x.dtype}): "
                        f"{type(err).__name__}: {str(err)[:300]}") from None
    if not model.loss.classification:
        if out.numel() != y.numel():
            raise DataError(f"{where}: the model outputs {tuple(out.shape)} for x_train[:2], y_train[:2] is "
                            f"{tuple(y.shape)}; mse needs one output per target")
        return
    if tuple(out.shape[:-1]) != tuple(y.shape) or out.dim() not in (2, 3):
        raise DataError(f"{where}: the model outputs {tuple(out.shape)} for x_train[:2], y_train[:2] is "
                        f"{tuple(y.shape)}; cross_entropy takes logits (N, C) with labels (N,), or (N, T, C) "
                        "with (N, T)")
    classes = out.shape[-1]
    for split, labels in (("train", data.y_train), ("dev", data.y_dev), ("test", data.y_test)):
        top = int(labels.max())
        if top >= classes:
            raise DataError(f"{where}: y_{split} has label {top}, outside 0..{classes - 1} (the model has "
                            f"{classes} outputs)")
