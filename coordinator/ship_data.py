"""The training data a Ray job's workers need, where they need it (workers/node_data.py has the worker's side).

Each worker first builds its arrays on its own node (data.path read there, a built-in set, a data.factory called
there) and keeps them when their digest is the coordinator's. Otherwise it takes them from Ray's object store: the
coordinator puts the arrays once (`ray.put`, in their stored dtype: MNIST's uint8 pixels), a single object for every
worker (iid) or one per worker holding only its partition (data.split dirichlet). Ray pulls an object to a node the
first time a process there asks for it; the other workers on that node read the node's copy from shared memory.

`dataset` bytes in result.json are what the links carry for it: each shipped object's array bytes once per node
(other than the coordinator's) that pulled it, 0 for a worker that built its arrays on its node. Ray's framing of an
object transfer (its serialisation header and chunking) is not counted, as for the rounds' payload. A worker
restarted later on a node that has lost its copy pulls the object again; that transfer is not counted.
"""
from __future__ import annotations

import os

import numpy as np
import ray

from coordinator.config import JobConfig
from workers.actor import WorkerData
from workers.data import StoredTrain, default_mnist_dir
from workers.node_data import DataRecipe, DataReport, Origin, digest


def recipe(cfg: JobConfig) -> DataRecipe:
    """The job's data config as a worker builds it on its node; data.path made absolute (an mnist job without
    one reads the coordinator's $HES_MNIST_DIR)."""
    d = cfg.data
    path = d.path if d.path is not None or d.dataset != "mnist" else default_mnist_dir()
    return DataRecipe(d.dataset, os.path.abspath(path) if path else path, d.dev_size, cfg.seed, d.factory,
                      dict(d.kwargs or {}), cfg.train.loss, d.classes)


def ship(arrays: list[StoredTrain], how: DataRecipe,
         parts: tuple[np.ndarray, ...] | None = None) -> list[WorkerData]:
    """Each worker's WorkerData: the recipe, its dirichlet partition's indices (`parts`, int32: they ride in the
    actor's arguments, not counted), and its arrays put in this node's object store, once per distinct StoredTrain
    (the same object for every iid worker)."""
    put: dict[int, tuple[str, ray.ObjectRef]] = {}
    for a in arrays:
        if id(a) not in put:
            put[id(a)] = (digest(a), ray.put(a))
    return [WorkerData(how, put[id(a)][0], [put[id(a)][1]], None if parts is None else parts[i].astype(np.int32))
            for i, a in enumerate(arrays)]


def link_bytes(reports: list[DataReport], shipped: list[WorkerData], here: str) -> int:
    """What the links carried: each shipped object's bytes once per other node whose workers took it."""
    pulled = {(w.shipped[0].hex(), r.node): r.nbytes for r, w in zip(reports, shipped, strict=True)
              if r.origin == Origin.SHIPPED and r.node != here}
    return sum(pulled.values())
