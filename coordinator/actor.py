"""The coordinator as a Ray actor: one per job, named `hes-job-<id>` so a restarted service can reattach.

It runs the Job (the parameter server and round loop) on a thread of its own and answers progress,
event and stop calls concurrently. `start_job` / `find_job` return a `JobHandle` for drivers.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import ray

from coordinator import runtime_env
from coordinator.config import JobConfig, validate_config
from coordinator.documents import JobResult, JobStatus, Poll, RoundReport, Snapshot, WorkerCounts, first_line
from coordinator.job import Job, Progress, failed_result, failure_message
from coordinator.local_ray import start_loopback_ray
from coordinator.rounds import RoundEvent

NAMESPACE = "hes"
MAX_EVENTS = 100_000  # round events kept for the service's metrics between two drains


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` ("auto" finds a local `ray start`), or $RAY_ADDRESS; else start Ray here.

    address "local" always starts a fresh Ray here (with num_cpus), even when a `ray start` cluster runs.
    A Ray started here listens on loopback only, with token authentication.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "include_dashboard": False}
    joining = address not in (None, "local") or (address is None and os.environ.get("RAY_ADDRESS"))
    if joining:
        ray.init(address=address, **kwargs)
    else:
        start_loopback_ray(num_cpus, **kwargs)  # never open to the network (coordinator/local_ray.py)


def actor_name(job_id: str) -> str:
    return f"hes-job-{job_id}"


@ray.remote(num_cpus=0, max_concurrency=8, max_restarts=0)
class CoordinatorActor:
    def __init__(self, config: dict[str, Any], out_dir: str, resume: bool, restarts: int = 0,
                 runtime_env: dict[str, Any] | None = None) -> None:
        self.cfg: JobConfig = validate_config(config)
        self.runtime_env = runtime_env  # cluster.runtime_env as uploaded by the driver (its workers get the same)
        self.out_dir, self.resume, self.restarts = out_dir, resume, restarts
        self.job: Job | None = None
        self.progress = Progress(epochs=self.cfg.train.epochs)
        self.events: deque[RoundReport] = deque(maxlen=MAX_EVENTS)
        self.result_doc: JobResult | None = None
        self.stop_requested = False
        self.lock = threading.Lock()

    def run(self) -> JobResult:
        from coordinator.ray_pool import ray_pool

        try:
            pool = functools.partial(ray_pool, runtime_env=self.runtime_env) if self.runtime_env else ray_pool
            self.job = Job(self.cfg, self.out_dir, resume=self.resume, pool_factory=pool, restarts=self.restarts)
            self.progress = self.job.progress
            if self.stop_requested:
                self.job.stop()
            self.result_doc = self.job.run(on_round=self._on_round)
        except Exception as err:  # the job fails; the actor stays up to report why (Job.run reports its own)
            if isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None:
                err = err.cause  # a worker's error, not Ray's wrapping of it (colours, pid, address)
            self.progress.status = JobStatus.FAILED
            self.progress.message = failure_message(err, self.cfg, self.progress.total_rounds)
            self.result_doc = self._failed_result(traceback.format_exc())
        return self.result_doc

    def _on_round(self, event: RoundEvent, p: Progress) -> None:
        with self.lock:
            self.events.append(RoundReport(event.round, event.kind, event.seconds, dict(event.bytes.up),
                                           dict(event.bytes.down), event.improvements, event.loss,
                                           event.episodes))

    def _failed_result(self, trace: str) -> JobResult:
        """result.json of a failed job (never raises: a full disk must not hide why the job failed)."""
        return failed_result(self.cfg, self.progress, self.job.model.num_parameters if self.job else None,
                             Path(self.out_dir), trace)

    def status(self) -> Snapshot:
        pool = self.job.pool if self.job is not None else None  # None until the job has made its pool
        counts = WorkerCounts() if pool is None else WorkerCounts(alive=pool.alive, restarting=pool.restarting)
        return self.progress.snapshot(counts)

    def drain_events(self) -> list[RoundReport]:
        with self.lock:
            out = list(self.events)
            self.events.clear()
        return out

    def stop(self) -> None:
        self.stop_requested = True
        if self.job is not None:
            self.job.stop()

    def result(self) -> JobResult | None:
        return self.result_doc


class JobStartError(RuntimeError):
    """A job's coordinator actor could not be created."""


class JobHandle:
    """A driver's view of one coordinator actor. `poll`, `request_stop` and `kill` turn Ray's errors into
    answers, so a driver (the service) needs no Ray of its own."""

    def __init__(self, actor: ray.actor.ActorHandle, run_ref: ray.ObjectRef | None) -> None:
        self.actor, self.run_ref = actor, run_ref

    def poll(self, timeout: float = 30.0) -> Poll:
        """The coordinator's snapshot and round events, and its result once its run is over."""
        try:
            done = self.done()  # first: when it is done, the status and events that follow are final
            snap = self.progress(timeout=timeout)
            events = self.events()
            return Poll(snap, events, self.result() if done else None)
        except ray.exceptions.GetTimeoutError:
            return Poll(timed_out=True)
        except ray.exceptions.RayError as err:
            return Poll(died=f"{type(err).__name__}: {first_line(err)}")

    def progress(self, timeout: float = 60) -> Snapshot:
        """The coordinator's progress snapshot; GetTimeoutError when it does not answer within `timeout`."""
        return ray.get(self.actor.status.remote(), timeout=timeout)

    def events(self) -> list[RoundReport]:
        return ray.get(self.actor.drain_events.remote(), timeout=60)

    def done(self) -> bool:
        if self.run_ref is not None:
            ready, _ = ray.wait([self.run_ref], timeout=0)
            return bool(ready)
        return self.result() is not None

    def result(self) -> JobResult | None:
        if self.run_ref is not None:
            return ray.get(self.run_ref)
        return ray.get(self.actor.result.remote(), timeout=60)

    def request_stop(self) -> bool:
        """Ask the coordinator to stop without waiting for its answer; False when it is gone."""
        try:
            self.actor.stop.remote()
            return True
        except ray.exceptions.RayError:
            return False

    def kill(self) -> None:
        """Kill the coordinator actor (a detached one outlives its run); nothing when it is gone already."""
        with contextlib.suppress(ray.exceptions.RayError):
            ray.kill(self.actor)


def cluster_resources() -> dict[str, float]:
    """The connected Ray cluster's total resources (CPU, GPU, memory, ...)."""
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def disconnect_ray() -> None:
    """Leave the cluster; a Ray started by this process stops with it."""
    ray.shutdown()


def start_job(cfg: JobConfig, out_dir: str, resume: bool = False, job_id: str | None = None,
              detached: bool = False, restarts: int = 0) -> JobHandle:
    """Create the coordinator actor (on this node, where out_dir is) and start its run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from coordinator.ray_pool import NOT_NICED

    here = ray.get_runtime_context().get_node_id()
    try:  # the job's own code (cluster.runtime_env) goes up once, from here; its actors get the URIs
        env = runtime_env.resolve(cfg.cluster.runtime_env)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise JobStartError(f"cluster.runtime_env: {first_line(err)}") from None
    # hard affinity: out_dir (checkpoints, result.json) is on this node's disk; the actor needs no CPU, so it fits
    options: dict[str, Any] = {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False),
                               # the parameter server is on every round's path: not niced (see ray_pool.worker_env)
                               "runtime_env": runtime_env.with_env_vars(env, dict(NOT_NICED))}
    if job_id is not None:
        options.update(name=actor_name(job_id), namespace=NAMESPACE)
    if detached:
        options["lifetime"] = "detached"
    try:
        actor = CoordinatorActor.options(**options).remote(cfg.model_dump(), out_dir, resume,  # type: ignore[attr-defined]
                                                             restarts, env)
        return JobHandle(actor, actor.run.remote())
    except (ray.exceptions.RayError, ValueError) as err:  # ValueError: the name is taken
        raise JobStartError(f"{type(err).__name__}: {first_line(err)}") from None


def find_job(job_id: str) -> JobHandle | None:
    """Reattach to a running job's coordinator after a service restart; None when it is gone."""
    try:
        actor = ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return None
    return JobHandle(actor, None)
