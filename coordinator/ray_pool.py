"""The Ray pool: worker actors spread over the cluster's nodes, byte accounting at the send sites.

Bytes are the lengths of the encoded payloads (workers/messages.py) each worker receives or returns:
a large decision (a full round's gradient) is `ray.put` once and its reference passed to every worker,
but every worker still receives it, so it counts once per worker, e.g. 238,510 params * 4 B = 954,040 B
(+ 1 B kind) per worker. Ray's own framing is not payload; `make bench` measures it on the wire.

Workers placed on the coordinator's own Ray node return their arrays (a full round's gradient, an
average round's parameters) through a shared-memory buffer instead of Ray's reply: a file of 4P bytes in
/dev/shm per such worker, created before the actor, mapped by both, its name unlinked as soon as every
actor has started (a restarted actor finds no name and uses Ray's reply again; if the coordinator dies
while its actors start, the next pool on that node removes the orphaned files). The buffers take at most
5% of /dev/shm's free space, which Ray's object store shares. The same bytes are counted. On this 2-core
machine the reply of the paper's MLP (954 kB) took about 1.8 ms through Ray and 0.6 ms this way
(BENCHMARKS.md, section 5). Workers on other nodes always use Ray. `HES_SHM_DISABLE=1` in the
coordinator's environment turns it off (for jobs of `hes serve`, the coordinator actor's: the environment
the Ray node was started with).
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from coordinator.accounting import Counters, RoundBytes
from coordinator.config import JobConfig
from coordinator.job import worker_k
from workers.actor import SHARED, WorkerActor, WorkerSpec
from workers.data import Dataset
from workers.hybrid import Decision, DecisionKind, Hyper
from workers.messages import (
    ARRAY_DECISIONS,
    Result,
    Status,
    Sync,
    Task,
    decode_result,
    encode_sync,
    encode_task,
    payload_size,
)
from workers.models import Model
from workers.replica import Schedule

PUT_THRESHOLD = 4096  # decisions larger than this go through the object store once per round
# Two Ray settings for the worker actors' processes alone (the cluster's other tasks keep Ray's defaults):
# - A worker's answer to a full round (its summed gradient, 4P bytes) rides inline in the reply to the
#   coordinator instead of going through the shared-memory object store, where Ray puts returns above
#   `max_direct_call_object_size` (100 KiB by default): a write, a seal and a fetch less per full round, about
#   3 ms for the paper's MLP on this machine. The process that returns reads the setting.
# - Ray starts worker processes at niceness 15, below everything else on the node; a worker actor IS the
#   job's compute, so it runs at niceness 0, as Ray's own job drivers do. On a node shared with other load
#   a niced worker took 149 ms for a stochastic round's trials that took it 110 ms at niceness 0 (README).
INLINE_RETURN_LIMIT = 64 << 20
NOT_NICED = {"RAY_worker_niceness": "0"}  # also the coordinator actor's (coordinator/actor.py)


def worker_env(num_parameters: int) -> dict[str, str]:
    inline = max(100 << 10, min(INLINE_RETURN_LIMIT, 4 * num_parameters + (64 << 10)))
    return {"RAY_max_direct_call_object_size": str(inline), **NOT_NICED}
MAX_ATTEMPTS = 6  # per worker call, across actor restarts and replacements
PLACEMENT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 300.0  # a new worker actor: process start, torch import, the training set from the store
# A worker that has not answered one round's call by then is taken for hung: killed, restarted, resynced.
CALL_TIMEOUT_S = float(os.environ.get("HES_WORKER_TIMEOUT_S", "600"))


SHM_DIR = "/dev/shm"
SHM_DISABLE = "HES_SHM_DISABLE"


SHM_SHARE_MAX = 0.05  # of /dev/shm's free space, which Ray's object store sized itself against
_SHM_NAME = re.compile(r"hes-(\d+)-[0-9a-f]+-w\d+")


class SharedBuffer:
    """One co-located worker's result buffer: a file in /dev/shm, its pages reserved, mapped here."""

    def __init__(self, worker: int, num_parameters: int) -> None:
        self.path = os.path.join(SHM_DIR, f"hes-{os.getpid()}-{uuid.uuid4().hex[:12]}-w{worker}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, 4 * num_parameters)  # ENOSPC now, not SIGBUS at the first write
            self.array = np.memmap(self.path, dtype="<f4", mode="r+", shape=(num_parameters,))
        except (OSError, ValueError):
            self.unlink()
            raise
        finally:
            os.close(fd)

    def view(self) -> np.ndarray:
        """The worker's last array, read-only; valid until its next call (the round loop combines first)."""
        v = self.array.view(np.ndarray)[:]
        v.flags.writeable = False
        return v

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def remove_orphans() -> int:
    """Unlink the buffers of coordinators that died while their actors were starting (the one window in
    which a name exists); returns how many. Every pool does this on its node before making its own."""
    removed = 0
    for name in os.listdir(SHM_DIR):
        m = _SHM_NAME.fullmatch(name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
        except PermissionError:
            pass  # alive, someone else's
    return removed


def shared_buffers(pg: object, n_workers: int, num_parameters: int) -> dict[int, SharedBuffer]:
    """A buffer for each worker whose bundle is on this process's node; none when /dev/shm is missing or
    turned off, or the buffers would take more than 5% of its free space (Ray's object store lives there)."""
    if os.environ.get(SHM_DISABLE, "") not in ("", "0") or not os.path.isdir(SHM_DIR):
        return {}
    here = ray.get_runtime_context().get_node_id()
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    local = [i for i in range(n_workers) if nodes.get(i) == here]
    if not local:
        return {}
    remove_orphans()
    st = os.statvfs(SHM_DIR)
    if 4 * num_parameters * len(local) > SHM_SHARE_MAX * st.f_bavail * st.f_frsize:
        return {}
    out = {}
    for i in local:
        try:
            out[i] = SharedBuffer(i, num_parameters)
        except (OSError, ValueError):
            break  # Ray carries the arrays of this worker and the rest
    return out


class ClusterTooSmall(RuntimeError):
    """The job asks for more CPUs/GPUs than the Ray cluster has."""


def decision_label(d: Decision, fallback: str) -> str:
    if d.kind in ARRAY_DECISIONS:
        return "full"
    if d.kind == DecisionKind.NONE:
        return fallback
    return "stochastic"


class RayPool:
    def __init__(self, specs: list[WorkerSpec], data: tuple, cpus: float, gpus: float,
                 counters: Counters) -> None:
        self.n_workers = len(specs)
        self.specs, self.cpus, self.gpus, self.counters = specs, cpus, gpus, counters
        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        total = ray.cluster_resources()
        need_cpu, need_gpu = cpus * len(specs), gpus * len(specs)
        if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
            raise ClusterTooSmall(
                f"cluster.workers: {len(specs)} workers x {cpus} CPU / {gpus} GPU need {need_cpu:g} CPUs and "
                f"{need_gpu:g} GPUs; the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs")
        self.pg = placement_group([bundle] * len(specs), strategy="SPREAD")
        ready, _ = ray.wait([self.pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            remove_placement_group(self.pg)
            raise ClusterTooSmall(f"cluster.workers: {len(specs)} workers could not be placed within "
                                  f"{PLACEMENT_TIMEOUT_S:.0f} s (CPUs busy with other jobs?)")
        self.data_ref = ray.put(data)  # the training set enters the object store once per job
        self.counters.dataset_bytes = sum(a.nbytes for a in data) * len(specs)
        self.shared = shared_buffers(self.pg, len(specs), specs[0].model.num_parameters)
        self.specs = [replace(sp, shared=self.shared[i].path) if i in self.shared else sp
                      for i, sp in enumerate(specs)]
        self.restarting = 0
        try:
            self.actors = [self._spawn(i) for i in range(len(specs))]
            self._wait_ready()
        finally:
            for buf in self.shared.values():  # every actor has mapped its buffer (or failed): the names go
                buf.unlink()

    @property
    def alive(self) -> int:
        return self.n_workers - self.restarting

    def _wait_ready(self) -> None:
        """Block until every actor has started and loaded the data, so round 0 times only round 0's work
        and a worker that cannot start (bad device, out of memory) fails the job here with its reason."""
        try:
            ray.get([a.info.remote() for a in self.actors], timeout=READY_TIMEOUT_S)
        except GetTimeoutError:
            self.close()
            raise RuntimeError(f"cluster: {self.n_workers} worker actors did not start within "
                               f"{READY_TIMEOUT_S:.0f} s") from None
        except RayActorError as e:
            self.close()
            raise RuntimeError(f"cluster: a worker actor failed to start: {e}") from None

    def _spawn(self, i: int) -> ray.actor.ActorHandle:
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus, "scheduling_strategy": strategy,
                   "max_restarts": 2, "max_task_retries": 0,
                   "runtime_env": {"env_vars": worker_env(self.specs[i].model.num_parameters)}}
        return WorkerActor.options(**options).remote(self.specs[i], self.data_ref)  # type: ignore[attr-defined]

    overlaps = True  # the workers compute while the coordinator applies its own copy of the last decision

    def send(self, task: Task) -> tuple[list[ray.ObjectRef], RoundBytes]:
        """Start `task` on every worker; returns at once. The bytes sent are counted here."""
        rb = RoundBytes()
        header, decision = encode_task(task)
        arg = ray.put(decision) if len(decision) > PUT_THRESHOLD else decision
        refs = [a.step.remote(header, arg) for a in self.actors]
        dlabel = decision_label(task.decision, task.kind.label)
        for _ in refs:
            rb.add(task.kind.label, "down", len(header))
            rb.add(dlabel, "down", len(decision))
        return refs, rb

    def collect(self, sent: tuple[list[ray.ObjectRef], RoundBytes], task: Task,
                state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        """Every worker's result for the task `send` started, ordered by worker; resyncs workers that need it."""
        refs, rb = sent
        results = []
        for i, ref in enumerate(refs):
            res = self._collect(i, ref, task, rb)
            if res.status == Status.NEED_SYNC:
                res = self._sync_and_rerun(i, task, state(), rb)
            results.append(res)
        return results, rb

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.collect(self.send(task), task, state)

    def _collect(self, i: int, ref: ray.ObjectRef, task: Task, rb: RoundBytes) -> Result:
        try:
            head, array, digest = ray.get(ref, timeout=CALL_TIMEOUT_S)
            if isinstance(array, str) and array == SHARED:
                array = self.shared[i].view()
        except (RayActorError, ActorUnavailableError, GetTimeoutError) as e:
            self.counters.worker_failures += 1
            if isinstance(e, GetTimeoutError):  # hung: restart it (max_restarts), it comes back at version 0
                ray.kill(self.actors[i], no_restart=False)
            self._revive(i)
            return Result(task.round, i, Status.NEED_SYNC)
        rb.add(task.kind.label, "up", payload_size(head, array))
        rb.add("sync", "up", len(digest))
        return decode_result(head, array, digest, task.kind)

    def _revive(self, i: int) -> None:
        """Wait for Ray to restart worker i; replace it when it is gone for good."""
        self.restarting += 1
        try:
            for _ in range(MAX_ATTEMPTS):
                try:
                    ray.get(self.actors[i].info.remote(), timeout=30)
                    return
                except ActorDiedError:
                    self.actors[i] = self._spawn(i)
                except (RayActorError, ActorUnavailableError, GetTimeoutError):
                    time.sleep(0.5)
            raise RuntimeError(f"worker {i} did not come back after {MAX_ATTEMPTS} attempts")
        finally:
            self.restarting -= 1

    def _sync_and_rerun(self, i: int, task: Task, state: Sync, rb: RoundBytes) -> Result:
        redo = replace(task, decision=Decision(task.round - 1, DecisionKind.NONE))
        for _ in range(MAX_ATTEMPTS):
            self.resync(i, state, rb)
            res = self.rerun(i, redo, rb)
            if res.status == Status.OK:
                return res
        raise RuntimeError(f"worker {i} kept failing in round {task.round}")

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None:
        data = encode_sync(state)
        rb.add("sync", "down", len(data))
        try:
            ray.get(self.actors[worker].sync.remote(data), timeout=CALL_TIMEOUT_S)
        except (RayActorError, ActorUnavailableError, GetTimeoutError) as e:
            self.counters.worker_failures += 1
            if isinstance(e, GetTimeoutError):
                ray.kill(self.actors[worker], no_restart=False)
            self._revive(worker)
            self.resync(worker, state, rb)

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        header, decision = encode_task(task)
        rb.add(task.kind.label, "down", len(header) + len(decision))
        return self._collect(worker, self.actors[worker].step.remote(header, decision), task, rb)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)
        for buf in self.shared.values():
            buf.unlink()
        self.shared = {}  # unmapped once the last view of a result is gone (a finished Job keeps its pool)


def ray_pool(cfg: JobConfig, data: Dataset, model: Model, hyper: Hyper, schedule: Schedule,
             counters: Counters) -> RayPool:
    """The Job pool factory for cluster.workers >= 1."""
    n = cfg.cluster.workers
    specs = [WorkerSpec(model, hyper, schedule, cfg.seed, worker_k(cfg), cfg.hybrid.combine, i, n,
                        max(1, int(cfg.cluster.cpus_per_worker))) for i in range(n)]
    return RayPool(specs, (data.x_train, data.y_train), cfg.cluster.cpus_per_worker,
                   cfg.cluster.gpus_per_worker, counters)
