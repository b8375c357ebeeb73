"""A job's parts, built in one place from its config: the data, the model, the update's hyperparameters, the
round schedule and, for data.split dirichlet, each worker slot's partition of the training set.

The job (coordinator/job.py), both pools (coordinator/pool.py, coordinator/ray_pool.py), bench and the service's
admission (service/validation.py, `plan_parts`: from the data's headers and labels, no inputs loaded) all take
their parts from here, so admission and a job's start refuse the same configs with the same messages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coordinator.config import JobConfig
from coordinator.own_model import OWN_DATA, make_model
from workers.data import NUM_CLASSES, DataFacts, Dataset, describe_dataset, keep_classes, load_dataset
from workers.models import Model, build_model
from workers.partition import dirichlet_partition
from workers.replica import Schedule
from workers.state import Hyper, Search
from workers.steps import noise_spec


@dataclass(frozen=True)
class JobParts:
    data: Dataset
    model: Model
    hyper: Hyper
    schedule: Schedule
    partitions: tuple[np.ndarray, ...] | None  # data.split dirichlet: the training indices each worker slot owns

    def worker_data(self, worker: int) -> tuple[np.ndarray, np.ndarray]:
        """The training arrays worker slot `worker` holds: the whole set (iid), or its partition's (dirichlet)."""
        if self.partitions is None:
            return self.data.x_train, self.data.y_train
        own = self.partitions[worker]
        return self.data.x_train[own], self.data.y_train[own]


@dataclass(frozen=True)
class PartsPlan:
    """What build_parts would build, but the data: admission's view of a job."""
    facts: DataFacts
    model: Model
    hyper: Hyper
    schedule: Schedule
    partitions: tuple[np.ndarray, ...] | None


def load_data(cfg: JobConfig) -> Dataset:
    """The data set the config names, with only data.classes' examples when it names some."""
    d = cfg.data
    data = load_dataset(d.dataset, d.path, d.dev_size, cfg.seed, d.factory, d.kwargs, cfg.train.loss)
    return data if d.classes is None else keep_classes(data, d.classes)


def build_parts(cfg: JobConfig) -> JobParts:
    """Every part of the job; ValueError (DataError, FactoryError) naming the field of a config it cannot run."""
    data = load_data(cfg)
    model = make_model(cfg, data)  # the paper's networks, or model.arch module (coordinator/own_model.py)
    plan = _plan(cfg, DataFacts.of(data), model)
    return JobParts(data, model, plan.hyper, plan.schedule, plan.partitions)


def plan_parts(cfg: JobConfig) -> PartsPlan:
    """build_parts' checks and parts without loading a built-in data set: MNIST's sizes and labels come from its
    files' headers and label files, a module is checked on two blank images. A job's own data (npz, factory) is
    loaded: its model is checked against it."""
    d, m = cfg.data, cfg.model
    if d.dataset in OWN_DATA:
        parts = build_parts(cfg)
        return PartsPlan(DataFacts.of(parts.data), parts.model, parts.hyper, parts.schedule, parts.partitions)
    facts = describe_dataset(d.dataset, d.path, d.dev_size, cfg.seed)
    if d.classes is not None:
        facts = facts.keep_classes(d.classes)
    if m.arch == "module":  # checked on two blank images of the data set's size, not its files
        model = make_model(cfg, _blank(facts))
    else:
        model = build_model(m.arch, m.hidden, m.activation, m.init, facts.image_side)
    return _plan(cfg, facts, model)


def _blank(facts: DataFacts) -> Dataset:
    """Two blank images shaped as the built-in data set's, labelled 0 and 9: what a module must take and tell apart."""
    x = np.zeros((2, 1, facts.image_side, facts.image_side), dtype=np.float32)
    y = np.array([0, NUM_CLASSES - 1], dtype=np.int64)
    return Dataset(facts.name, x, y, x, y, x, y)


def _plan(cfg: JobConfig, facts: DataFacts, model: Model) -> PartsPlan:
    """The checks on sizes, the hyperparameters, the partition (the one place it is computed) and the schedule."""
    t, h = cfg.train, cfg.hybrid
    if t.batch_size > facts.n_train:
        raise ValueError(f"train.batch_size: {t.batch_size} exceeds the {facts.n_train} training examples of "
                         f"{facts.name}")
    check_shares(cfg)
    search = Search(h.combine, h.trials, worker_k(cfg), cfg.seed, h.mode == "zo", h.guided_m, h.guided_alpha, h.es_lr,
                    h.es_weights)
    hyper = Hyper(t.lr, t.l2, h.sigma, t.batch_size, model.num_weights, noise_spec(model, h.noise, h.noise_rank),
                  frozen=frozen_prefix(model, cfg.model.trainable), search=search)
    # one slot per worker (one in process, workers: 0)
    parts = dirichlet_partition(facts.y_train, max(1, cfg.cluster.workers), cfg.data.alpha, cfg.seed) \
        if cfg.data.split == "dirichlet" else None
    schedule = Schedule(h.mode, h.r, t.batch_size, facts.n_train, cfg.seed, t.shuffle, cfg.data.split,
                        tuple(len(p) for p in parts) if parts is not None else ())
    return PartsPlan(facts, model, hyper, schedule, parts)


def check_shares(cfg: JobConfig) -> None:
    """Every worker takes a share of each batch: no more workers than a batch has examples (read no data)."""
    if cfg.cluster.workers > cfg.train.batch_size:
        raise ValueError(f"cluster.workers: {cfg.cluster.workers} workers cannot share a batch of "
                         f"{cfg.train.batch_size} examples (train.batch_size)")


def worker_k(cfg: JobConfig) -> int:
    """Trials per worker per stochastic round: none for the stale control, which does no search."""
    return 0 if cfg.hybrid.mode == "stale" else cfg.hybrid.k


def frozen_prefix(model: Model, trainable: str) -> tuple[int, int]:
    """(leading weights, leading biases) that no update may change: all but the last layer's for `last`."""
    if trainable == "all":
        return 0, 0
    last_w, last_b = math.prod(model.weights[-1].shape), math.prod(model.biases[-1].shape)
    return model.num_weights - last_w, model.num_parameters - model.num_weights - last_b
