"""Admission checks a schema-valid job config must also pass before the service accepts it.

Each raises `Refused` with a message that names the field. The cheap ones come first and read no data: the
service's limits and whether the Ray cluster can ever hold the job; then the data path and each data file
(inside the allowed roots, existing); then, with one of a few admission slots (`AdmissionGate`), what the
core itself would refuse at start (coordinator/parts.py), from the data files' headers and labels without loading
the images: batch size (after data.classes), workers per batch, the dirichlet partition,
dev size, image size, the model's size and the job's total rounds.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coordinator.config import JobConfig
from coordinator.parts import check_shares, plan_parts
from service.settings import Settings
from workers.data import (
    DataError,
    default_mnist_dir,
    idx_candidates,
)
from workers.factories import factory_allowed


class Refused(ValueError):
    """A job config the service will not run; the message names the field."""


class Busy(RuntimeError):
    """No admission slot came free in time; the submit may be retried."""


class AdmissionGate:
    """At most `slots` data inspections at a time (HES_MAX_PARALLEL_ADMISSIONS); a submit waits `wait_s` for one."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots, self.wait_s = slots, wait_s
        self._free = threading.BoundedSemaphore(slots)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.wait_s):
            raise Busy(f"the service is busy: {self.slots} submits are having their data checked already "
                       f"(HES_MAX_PARALLEL_ADMISSIONS); retry in a few seconds")
        try:
            yield
        finally:
            self._free.release()


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
    if c.cpus_per_worker < settings.min_cpus_per_worker:
        raise Refused(f"cluster.cpus_per_worker: {c.cpus_per_worker:g} is below this service's minimum of "
                      f"{settings.min_cpus_per_worker:g} CPUs per worker (HES_MIN_CPUS_PER_WORKER)")
    try:
        check_shares(cfg)
    except ValueError as err:
        raise Refused(str(err)) from None
    if c.address is not None:
        raise Refused("cluster.address: the service runs every job on its own Ray cluster "
                      "(HES_RAY_ADDRESS); leave it null")
    if c.backend == "local":
        # The coordinator actor holds no CPU (validation.needs): N replicas computing inside it would load the
        # service's node unaccounted. The local backend is for `hes train` on one machine.
        raise Refused("cluster.backend: the service runs every job's workers as Ray actors (backend ray); "
                      "backend local runs them in the calling process and is for `hes train`")


def check_factories(cfg: JobConfig, settings: Settings) -> None:
    """A REST job runs only code the operator allowed: model.factory and data.factory inside
    HES_ALLOWED_FACTORIES, judged by the name alone (nothing is imported here), and no code of its own
    (cluster.runtime_env would ship and run it)."""
    allowed = settings.allowed_factories
    for field, name in (("model.factory", cfg.model.factory), ("data.factory", cfg.data.factory)):
        if name is not None and not factory_allowed(name, allowed):
            raise Refused(f"{field}: {name[:200]!r} is outside the factories this service runs "
                          f"({', '.join(allowed) or 'none'}; HES_ALLOWED_FACTORIES)")
    if cfg.cluster.runtime_env is not None:
        raise Refused("cluster.runtime_env: the service runs no code sent with a job; install the package on "
                      "every Ray node and list it in HES_ALLOWED_FACTORIES")


def resolve_data_path(cfg: JobConfig, settings: Settings) -> JobConfig:
    """The config with data.path made absolute, if it lies inside an allowed root and is a folder (a file for
    dataset npz).

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
        npz = cfg.data.dataset == "npz"
        is_dir = inside and (resolved.is_file() if npz else resolved.is_dir())
    except (OSError, ValueError) as err:  # a NUL byte, a name too long for the file system
        raise Refused(f"data.path: {cfg.data.path[:200]!r} is not a usable path ({err})") from None
    if not inside:
        raise Refused(f"data.path: {cfg.data.path[:200]!r} lies outside the allowed data roots "
                      f"({', '.join(str(r) for r in roots)}; HES_ALLOWED_DATA_ROOTS)")
    if not is_dir:
        raise Refused(f"data.path: {cfg.data.path[:200]!r} does not exist or is not a {'file' if npz else 'folder'}")
    if not npz:
        check_data_files(resolved, cfg.data.path, roots)
    data = cfg.data.model_copy(update={"path": str(resolved)})
    return cfg.model_copy(update={"data": data})


def resolve_init_from(cfg: JobConfig, settings: Settings) -> JobConfig:
    """The config with model.init_from made absolute, if it is a finished job's folder inside the service's job
    outputs (a relative value names a job id: <state_dir>/jobs/<id>) or the allowed data roots, and its
    model.safetensors resolves inside them too."""
    if cfg.model.init_from is None:
        return cfg
    roots = [settings.jobs_dir.resolve(), *settings.allowed_data_roots]
    given = Path(cfg.model.init_from)
    try:
        resolved = (given if given.is_absolute() else roots[0] / given).resolve()
        inside = any(resolved.is_relative_to(root) for root in roots)
        model_file = (resolved / "model.safetensors").resolve() if inside else resolved
        usable = inside and model_file.is_file() and any(model_file.is_relative_to(root) for root in roots)
    except (OSError, ValueError, RuntimeError) as err:  # a NUL byte, a name too long, a symlink loop
        raise Refused(f"model.init_from: {cfg.model.init_from[:200]!r} is not a usable path ({err})") from None
    if not inside:
        raise Refused(f"model.init_from: {cfg.model.init_from[:200]!r} lies outside this service's job outputs "
                      f"and data roots ({', '.join(str(r) for r in roots)})")
    if not usable:
        raise Refused(f"model.init_from: {cfg.model.init_from[:200]!r} holds no model.safetensors inside "
                      "the allowed folders (a finished job's output folder, or its id)")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": str(resolved)})})


def check_data_files(folder: Path, given: str, roots: list[Path]) -> None:
    """Every file the loader may open in the folder, symlinks followed, lies inside the allowed roots too.

    The message names the file, never anything read from it."""
    for path in idx_candidates(folder):
        if not os.path.lexists(path):
            continue
        try:
            inside = any(path.resolve().is_relative_to(root) for root in roots)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:
            raise Refused(f"data.path: {path.name} in {given[:200]!r} resolves outside the allowed data roots "
                          f"({', '.join(str(r) for r in roots)}; HES_ALLOWED_DATA_ROOTS)")


def preflight(cfg: JobConfig, settings: Settings) -> int:
    """What the job would refuse at its start (coordinator/parts.py plan_parts: the same checks, from the data's
    headers and labels, not its images), and this service's limits on the model and the rounds; the job's total
    number of rounds."""
    t = cfg.train
    try:
        plan = plan_parts(cfg)
    except DataError as err:
        msg = str(err)
        raise Refused(msg if _FIELD_PREFIX.match(msg) else f"data.path: {msg}") from None
    except ValueError as err:
        msg = str(err)
        raise Refused(msg if _FIELD_PREFIX.match(msg) else f"config: {msg}") from None
    if plan.model.num_parameters > settings.max_parameters:
        field = "model.factory" if cfg.model.arch == "module" else "model.hidden"
        raise Refused(f"{field}: the model would have {plan.model.num_parameters:,} parameters, above this "
                      f"service's limit of {settings.max_parameters:,} (HES_MAX_PARAMETERS)")
    schedule = plan.schedule
    if schedule.rounds_per_epoch < 1:
        raise Refused(f"train.batch_size: {t.batch_size} leaves no full batch in an epoch")
    total = t.epochs * schedule.rounds_per_epoch
    if total > settings.max_total_rounds:
        raise Refused(f"train.epochs: {t.epochs} epochs of {schedule.rounds_per_epoch:,} rounds are {total:,} "
                      f"rounds, above this service's limit of {settings.max_total_rounds:,} (HES_MAX_TOTAL_ROUNDS)")
    return total


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


def admit(cfg: JobConfig, settings: Settings, cluster: dict[str, Any],
          gate: AdmissionGate | None = None) -> tuple[JobConfig, int]:
    """The config as the job will run it and its total rounds, or Refused naming the first bad field.

    The checks that read no data come first; the data's headers are read holding one of the gate's slots
    (Busy when none comes free in time)."""
    check_factories(cfg, settings)  # first: before anything could import a factory
    check_limits(cfg, settings)
    check_capacity(cfg, cluster)
    cfg = resolve_data_path(cfg, settings)
    cfg = resolve_init_from(cfg, settings)
    with gate.slot() if gate is not None else contextlib.nullcontext():
        total_rounds = preflight(cfg, settings)
    return cfg, total_rounds
