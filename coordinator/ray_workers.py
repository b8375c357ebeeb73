"""The worker actors of one Ray job, the pool's transport: placed one per bundle of a SPREAD placement group, each
holding its training arrays from the object store (once per job, or each worker's own partition), those on the
coordinator's node replying through shared memory (coordinator/shared_buffers.py); the calls that reach one worker
and Ray's record of it. The round protocol is coordinator/ray_pool.py's, who is in the job coordinator/membership.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import ray
from ray._private.state import actors as gcs_actor_table
from ray.exceptions import GetTimeoutError, RayActorError  # RayActorError: ActorDiedError, ActorUnavailableError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from coordinator.accounting import Counters
from coordinator.runtime_env import with_env_vars
from coordinator.shared_buffers import SharedBuffer, shared_buffers
from coordinator.ship_data import link_bytes
from workers.actor import SHARED, WorkerActor, WorkerData, WorkerSpec
from workers.node_data import DataReport

# Two Ray settings for the worker actors' processes alone (the cluster's other tasks keep Ray's defaults):
# - A worker's answer to a full round (its summed gradient, 4P bytes) rides inline in the reply to the
#   coordinator instead of going through the shared-memory object store, where Ray puts returns above
#   `max_direct_call_object_size` (100 KiB by default): a write, a seal and a fetch less per full round.
#   The process that returns reads the setting.
# - Ray starts worker processes at niceness 15, below everything else on the node; a worker actor IS the
#   job's compute, so it runs at niceness 0, as Ray's own job drivers do (docs/design.md, "How a round travels").
INLINE_RETURN_LIMIT = 64 << 20
NOT_NICED = {"RAY_worker_niceness": "0"}  # also the coordinator actor's (coordinator/actor.py)
PLACEMENT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 300.0  # a new worker actor: process start, torch import, the training set from the store
PROBE_S = 10.0  # for a restarted worker's first answer


def worker_env(num_parameters: int) -> dict[str, str]:
    inline = max(100 << 10, min(INLINE_RETURN_LIMIT, 4 * num_parameters + (64 << 10)))
    return {"RAY_max_direct_call_object_size": str(inline), **NOT_NICED}


class ClusterTooSmall(RuntimeError):
    """The job asks for more CPUs/GPUs than the Ray cluster has."""


@dataclass(frozen=True)
class ActorRecord:
    state: str  # ALIVE, RESTARTING, DEAD, PENDING_CREATION, ...; "" when Ray has no record
    restarts: int  # how many times Ray has restarted it


def actor_record(actor: ray.actor.ActorHandle) -> ActorRecord:
    """Ray's GCS record of an actor. The state API (`ray.util.state`) reads the same through the dashboard, which
    a local Ray here runs without."""
    rec = gcs_actor_table(actor_id=actor._actor_id.hex())  # type: ignore[attr-defined]
    return ActorRecord(rec.get("State", ""), int(rec.get("NumRestarts", 0)))


class RayWorkers:
    def __init__(self, specs: list[WorkerSpec], data: list[WorkerData], cpus: float, gpus: float,
                 counters: Counters, shared_memory: bool = True, gpu_workers: int | None = None,
                 runtime_env: dict | None = None) -> None:
        """`gpus` GPUs for each of the first `gpu_workers` workers (all of them by default), none for the others:
        a worker computes on CUDA when Ray gives it a GPU (workers/actor.py). `data`: how each worker gets its
        training arrays (coordinator/ship_data.py); the bytes that took are counted once every worker has them.
        `runtime_env`: the job's cluster.runtime_env, uploaded (coordinator/runtime_env.py)."""
        self.runtime_env = runtime_env or {}
        self.specs, self.cpus = specs, cpus
        self.gpus = [gpus if gpu_workers is None or i < gpu_workers else 0.0 for i in range(len(specs))]
        bundles = [{"CPU": cpus, **({"GPU": g} if g else {})} for g in self.gpus]
        total = ray.cluster_resources()
        need_cpu, need_gpu = cpus * len(specs), sum(self.gpus)
        if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
            raise ClusterTooSmall(
                f"cluster.workers: {len(specs)} workers x {cpus} CPU / {gpus} GPU need {need_cpu:g} CPUs and "
                f"{need_gpu:g} GPUs; the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs")
        self.pg = placement_group(bundles, strategy="SPREAD")
        ready, _ = ray.wait([self.pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            remove_placement_group(self.pg)
            raise ClusterTooSmall(f"cluster.workers: {len(specs)} workers could not be placed within "
                                  f"{PLACEMENT_TIMEOUT_S:.0f} s (CPUs busy with other jobs?)")
        self.data = data
        # worker slot i takes bundle self.bundle[i]: the bundles by node, so that consecutive slots share a node and
        # a ring over the slots in order (allreduce) crosses each node's link once each way, whatever the placement
        nodes = placement_group_table(self.pg)["bundles_to_node_id"]
        first: dict[str, int] = {}
        for b in range(len(specs)):
            first.setdefault(nodes.get(b, ""), b)
        self.bundle = list(range(len(specs)))
        if len(set(self.gpus)) == 1:  # alike bundles only (a mixed job's GPU bundles come first, in slot order)
            self.bundle.sort(key=lambda b: (first[nodes.get(b, "")], b))
        self.shared: dict[int, SharedBuffer] = {}
        if shared_memory:
            here = ray.get_runtime_context().get_node_id()
            self.shared = shared_buffers([i for i in range(len(specs)) if nodes.get(self.bundle[i]) == here],
                                         specs[0].model.num_parameters)
        self.specs = [replace(sp, shared=self.shared[i].path) if i in self.shared else sp
                      for i, sp in enumerate(specs)]
        try:
            self.actors = [self._spawn(i) for i in range(len(specs))]
            self._wait_ready()
            self.data_reports: list[DataReport] = ray.get([a.data.remote() for a in self.actors])
            counters.dataset_bytes = link_bytes(self.data_reports, data, ray.get_runtime_context().get_node_id())
        finally:
            for buf in self.shared.values():  # every actor has mapped its buffer (or failed): the names go
                buf.unlink()

    def _wait_ready(self) -> None:
        """Block until every actor has started and loaded the data, so round 0 times only round 0's work
        and a worker that cannot start (bad device, out of memory) fails the job here with its reason."""
        try:
            ray.get([a.info.remote() for a in self.actors], timeout=READY_TIMEOUT_S)
        except GetTimeoutError:
            self.close()
            raise RuntimeError(f"cluster: {len(self.actors)} worker actors did not start within "
                               f"{READY_TIMEOUT_S:.0f} s") from None
        except RayActorError as e:
            self.close()
            raise RuntimeError(f"cluster: a worker actor failed to start: {e}") from None

    def _spawn(self, i: int) -> ray.actor.ActorHandle:
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self.bundle[i])
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus[i], "scheduling_strategy": strategy,
                   "max_restarts": -1, "max_task_retries": 0,
                   "runtime_env": with_env_vars(self.runtime_env, worker_env(self.specs[i].model.num_parameters))}
        return WorkerActor.options(**options).remote(self.specs[i], self.data[i])  # type: ignore[attr-defined]

    def replace_actor(self, i: int) -> None:
        """A new actor for slot i, whose actor died for good; it waits for its bundle's node."""
        self.actors[i] = self._spawn(i)

    def step(self, i: int, header: bytes, decision: bytes | ray.ObjectRef) -> ray.ObjectRef:
        return self.actors[i].step.remote(header, decision)

    def sync(self, i: int, data: bytes) -> ray.ObjectRef:
        return self.actors[i].sync.remote(data)

    def array(self, i: int, array: np.ndarray | str | None) -> np.ndarray | None:
        """A reply's array: worker i's shared buffer when it wrote its array there."""
        if isinstance(array, str):
            assert array == SHARED, f"worker {i} returned {array!r}"
            return self.shared[i].view()
        return array

    def kill(self, i: int) -> None:
        """Worker i is hung: Ray restarts it, at version 0."""
        ray.kill(self.actors[i], no_restart=False)

    def record(self, i: int) -> ActorRecord:
        return actor_record(self.actors[i])

    def nodes(self) -> list[str | None]:
        """Each worker's node, as its bundle has it (None while it has none)."""
        table = placement_group_table(self.pg)["bundles_to_node_id"]
        return [table.get(self.bundle[i]) or None for i in range(len(self.actors))]

    def placed(self, i: int) -> bool:
        """Whether worker i's bundle has a node."""
        return bool(placement_group_table(self.pg)["bundles_to_node_id"].get(self.bundle[i]))

    def answers(self, i: int) -> bool:
        try:
            ray.get(self.actors[i].info.remote(), timeout=PROBE_S)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)
        for buf in self.shared.values():
            buf.unlink()
        self.shared = {}  # unmapped once the last view of a result is gone (a finished Job keeps its pool)
