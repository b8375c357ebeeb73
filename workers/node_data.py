"""How a worker gets its training arrays: built on its own node from the job's data config, or shipped.

A worker first builds its arrays where it runs (`read_here`): it reads data.path (mnist, npz) when that path is
readable on its node (a shared file system), builds the built-in sets (digits, synthetic) from the job seed, and
calls a data.factory there (so a factory must import on every node: install it, or ship it with
cluster.runtime_env; it is then called once per worker, and must return the same arrays each time). Under
`data.split: dirichlet` it takes its own partition, whose indices the coordinator sends. The result counts only
when its digest equals the one the coordinator computed from its own copy: a path that holds other data on this
node, or a factory that returns other arrays, is not trusted. Otherwise the worker is sent the arrays
(`StoredTrain`, in their stored dtype, only its partition under dirichlet) through Ray's object store, once per
node (coordinator/ship_data.py). Either way the replica trains on `StoredTrain.arrays()`, bitwise the arrays of
the coordinator's Dataset.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from workers.data import DataError, StoredTrain, keep_classes, load_dataset
from workers.factories import FactoryError


@dataclass(frozen=True)
class DataRecipe:
    """The job's data config, as load_dataset and keep_classes take it; `path` is the coordinator's (absolute)."""
    dataset: str
    path: str | None
    dev_size: int | None
    seed: int
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "cross_entropy"
    classes: list[int] | None = None


class Origin(StrEnum):
    NODE = "node"  # built on the worker's own node: nothing shipped
    SHIPPED = "shipped"  # sent through the object store


@dataclass(frozen=True)
class DataReport:
    """Where a worker's training arrays came from; `reason`: why it could not build them on its node."""
    origin: Origin
    node: str
    nbytes: int  # the arrays' bytes as stored (what shipping them carries)
    reason: str = ""


def digest(stored: StoredTrain) -> str:
    """A fingerprint of the arrays and their standardisation (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for a in (stored.x, stored.y):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    h.update(repr((stored.mean, stored.std)).encode())
    return h.hexdigest()


def build(recipe: DataRecipe, part: np.ndarray | None = None) -> StoredTrain:
    """The training arrays as stored, built from the recipe as the coordinator built its own; only the examples
    `part` indexes (a worker slot's dirichlet partition, which the coordinator computes) when given."""
    data = load_dataset(recipe.dataset, recipe.path, recipe.dev_size, recipe.seed, recipe.factory, recipe.kwargs,
                        recipe.loss)
    if recipe.classes is not None:
        data = keep_classes(data, recipe.classes)
    return data.stored_train if part is None else data.stored_train.take(part)


def read_here(recipe: DataRecipe, part: np.ndarray | None, expected: str) -> StoredTrain | str:
    """The arrays built on this node when they match the coordinator's digest; else why not (a short reason)."""
    try:
        stored = build(recipe, part)
    except (DataError, FactoryError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {str(err)[:300]}"
    if digest(stored) != expected:
        return "the data built on this node differs from the coordinator's (another file at data.path?)"
    return stored
