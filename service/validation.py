"""Admission checks a schema-valid job config must also pass before the service accepts it.

Each raises `Refused` with a message that names the field: the service's limits, the data path (inside
the allowed roots, existing), what the core itself would refuse at start (it builds the data set and the
model's layout here: batch size, dev size, image size), and whether the Ray cluster can ever hold the job.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from coordinator.config import JobConfig
from coordinator.job import build_parts
from service.settings import Settings
from workers.data import DataError, default_mnist_dir


class Refused(ValueError):
    """A job config the service will not run; the message names the field."""


_FIELD_PREFIX = re.compile(r"^[a-z_]+(\.[a-z_]+)*: ")


def check_limits(cfg: JobConfig, settings: Settings) -> None:
    c, h = cfg.cluster, cfg.hybrid
    if h.k > settings.max_k:
        raise Refused(f"hybrid.k: {h.k} trials per worker exceeds this service's limit of {settings.max_k} "
                      "(HES_MAX_K)")
    if c.workers < 1:
        raise Refused("cluster.workers: the service runs jobs on Ray workers, so at least 1 "
                      "(0 runs in-process and is for `hes train`)")
    if c.workers > settings.max_workers_per_job:
        raise Refused(f"cluster.workers: {c.workers} exceeds this service's limit of "
                      f"{settings.max_workers_per_job} per job (HES_MAX_WORKERS_PER_JOB)")
    if c.workers > cfg.train.batch_size:
        raise Refused(f"cluster.workers: {c.workers} workers cannot share a batch of {cfg.train.batch_size} "
                      "examples (train.batch_size)")
    if c.address is not None:
        raise Refused("cluster.address: the service runs every job on its own Ray cluster "
                      "(HES_RAY_ADDRESS); leave it null")


def resolve_data_path(cfg: JobConfig, settings: Settings) -> JobConfig:
    """The config with data.path made absolute, if it lies inside an allowed root and is a folder.

    MNIST without a path reads the service's $HES_MNIST_DIR; it is written into the config so the job
    does not depend on the environment of the Ray node its coordinator lands on."""
    if cfg.data.path is None:
        default = default_mnist_dir()
        if cfg.data.dataset != "mnist" or not default:
            return cfg
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(Path(default).resolve())})})
    roots = settings.allowed_data_roots
    given = Path(cfg.data.path)  # relative to the first root; no `~`: the client names no home folders
    try:
        resolved = (given if given.is_absolute() else roots[0] / given).resolve()
        inside = any(resolved.is_relative_to(root) for root in roots)
        is_dir = inside and resolved.is_dir()
    except (OSError, ValueError) as err:  # a NUL byte, a name too long for the file system
        raise Refused(f"data.path: {cfg.data.path[:200]!r} is not a usable path ({err})") from None
    if not inside:
        raise Refused(f"data.path: {cfg.data.path[:200]!r} lies outside the allowed data roots "
                      f"({', '.join(str(r) for r in roots)}; HES_ALLOWED_DATA_ROOTS)")
    if not is_dir:
        raise Refused(f"data.path: {cfg.data.path[:200]!r} does not exist or is not a folder")
    data = cfg.data.model_copy(update={"path": str(resolved)})
    return cfg.model_copy(update={"data": data})


def preflight(cfg: JobConfig, settings: Settings) -> int:
    """Build the data set and the model's layout as the job will; the job's total number of rounds."""
    try:
        _, model, _, schedule = build_parts(cfg)
    except DataError as err:
        msg = str(err)
        raise Refused(msg if _FIELD_PREFIX.match(msg) else f"data.path: {msg}") from None
    except ValueError as err:
        msg = str(err)
        raise Refused(msg if _FIELD_PREFIX.match(msg) else f"config: {msg}") from None
    if model.num_parameters > settings.max_parameters:
        raise Refused(f"model.hidden: the model would have {model.num_parameters:,} parameters, above this "
                      f"service's limit of {settings.max_parameters:,} (HES_MAX_PARAMETERS)")
    if schedule.rounds_per_epoch < 1:
        raise Refused(f"train.batch_size: {cfg.train.batch_size} leaves no full batch in an epoch")
    return cfg.train.epochs * schedule.rounds_per_epoch


def needs(cfg: JobConfig) -> dict[str, float]:
    """Ray resources the job's workers hold while it runs (the coordinator actor takes none)."""
    c = cfg.cluster
    return {"CPU": c.workers * c.cpus_per_worker, "GPU": c.workers * c.gpus_per_worker}


def check_capacity(cfg: JobConfig, cluster: dict[str, Any]) -> None:
    """Refuse a job that this Ray cluster could never place, even when idle."""
    need, c = needs(cfg), cfg.cluster
    have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if need["CPU"] > have_cpu or need["GPU"] > have_gpu:
        field = "cluster.gpus_per_worker" if need["GPU"] > have_gpu else "cluster.workers"
        raise Refused(f"{field}: {c.workers} workers x {c.cpus_per_worker:g} CPU / {c.gpus_per_worker:g} GPU "
                      f"need {need['CPU']:g} CPUs and {need['GPU']:g} GPUs; the Ray cluster has "
                      f"{have_cpu:g} CPUs and {have_gpu:g} GPUs")


def admit(cfg: JobConfig, settings: Settings, cluster: dict[str, Any]) -> tuple[JobConfig, int]:
    """The config as the job will run it and its total rounds, or Refused naming the first bad field."""
    check_limits(cfg, settings)
    cfg = resolve_data_path(cfg, settings)
    total_rounds = preflight(cfg, settings)
    check_capacity(cfg, cluster)
    return cfg, total_rounds
