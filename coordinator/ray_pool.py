"""The Ray pool: worker actors spread over the cluster's nodes, byte accounting at the send sites, faults.

Bytes are the lengths of the encoded payloads (workers/messages.py) each worker receives or returns:
a large decision (a full round's gradient) is `ray.put` once and its reference passed to every worker,
but every worker still receives it, so it counts once per worker, e.g. 238,510 params * 4 B = 954,040 B
(+ 1 B kind) per worker. Ray's own framing is not payload; `make bench` measures it on the wire.
Workers on the coordinator's own node return their arrays through shared memory (coordinator/shared_buffers.py).

Faults. Worker actors restart as often as they die (`max_restarts=-1`); a restarted one comes back at version 0
and is resynced (bytes counted as sync). Every death is counted once in `Counters.worker_failures`, from Ray's own
record of the actor (its restart count in the GCS actor table, which also sees a death between two calls), plus one
for an actor that died for good and was replaced. A worker that dies more than MAX_DEATHS_PER_ROUND times in one
round ends the job with a message naming it. A worker that does not answer a call within `HES_WORKER_TIMEOUT_S`
is taken for hung: killed, restarted, resynced.

Shrink and grow. A worker cannot come back when its placement-group bundle has had no node for UNPLACED_GRACE_S
(its node was removed and Ray found no room for the bundle elsewhere) or it is not back RESTART_TIMEOUT_S after it
died. It then leaves the job instead of failing it: the rounds go on with the workers left, which split each
minibatch among themselves (a full round that lost a worker is redone on the new split, so every example of the
batch counts once; a stochastic round takes the argmin over the live workers' trials). Ray keeps such an actor
pending in its bundle and restarts it once the bundle is placed again (a node joins); the pool looks every
REJOIN_POLL_S, and the worker rejoins at the next round: it is synced (counted as sync) and the shards are re-split.
`alive` and `restarting` count the live workers and the others (recovering, or waiting for a node).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import ray
from ray._private.state import actors as gcs_actor_table
from ray.exceptions import GetTimeoutError, RayActorError  # RayActorError: ActorDiedError, ActorUnavailableError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from coordinator.accounting import Counters, RoundBytes, count_task, decision_label
from coordinator.config import JobConfig
from coordinator.parts import JobParts, worker_k
from coordinator.runtime_env import resolve, with_env_vars
from coordinator.shared_buffers import SHM_DISABLE, SharedBuffer, shared_buffers
from coordinator.ship_data import link_bytes, recipe, ship
from workers.actor import SHARED, WorkerActor, WorkerData, WorkerSpec
from workers.messages import (
    Result,
    RoundKind,
    Status,
    Sync,
    Task,
    decode_result,
    encode_sync,
    encode_task,
    payload_size,
)
from workers.node_data import DataReport
from workers.state import Decision, DecisionKind

__all__ = ["SHM_DISABLE", "ClusterTooSmall", "PoolSettings", "RayPool", "ray_pool", "worker_env"]

PUT_THRESHOLD = 4096  # decisions larger than this go through the object store once per round
# Two Ray settings for the worker actors' processes alone (the cluster's other tasks keep Ray's defaults):
# - A worker's answer to a full round (its summed gradient, 4P bytes) rides inline in the reply to the
#   coordinator instead of going through the shared-memory object store, where Ray puts returns above
#   `max_direct_call_object_size` (100 KiB by default): a write, a seal and a fetch less per full round.
#   The process that returns reads the setting.
# - Ray starts worker processes at niceness 15, below everything else on the node; a worker actor IS the
#   job's compute, so it runs at niceness 0, as Ray's own job drivers do (docs/design.md, "How a round travels").
INLINE_RETURN_LIMIT = 64 << 20
NOT_NICED = {"RAY_worker_niceness": "0"}  # also the coordinator actor's (coordinator/actor.py)


def worker_env(num_parameters: int) -> dict[str, str]:
    inline = max(100 << 10, min(INLINE_RETURN_LIMIT, 4 * num_parameters + (64 << 10)))
    return {"RAY_max_direct_call_object_size": str(inline), **NOT_NICED}


MAX_ATTEMPTS = 6  # sync-and-rerun rounds of one worker in one round without a death in between
MAX_DEATHS_PER_ROUND = 5  # a worker that dies more often within one round ends the job
PLACEMENT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 300.0  # a new worker actor: process start, torch import, the training set from the store
RESTART_TIMEOUT_S = READY_TIMEOUT_S  # a worker not back this long after it died leaves the job
UNPLACED_GRACE_S = 5.0  # a worker whose bundle has had no node this long leaves the job
REJOIN_POLL_S = 5.0  # how often a shrunk job looks for its missing workers (one GCS call each)
POLL_S = 0.2  # between two looks at a recovering worker
PROBE_S = 10.0  # for a restarted worker's first answer


@dataclass(frozen=True)
class PoolSettings:
    """What the pool reads from the coordinator's environment, once, when it is made."""
    call_timeout_s: float = 600.0  # HES_WORKER_TIMEOUT_S: a worker that has not answered a call by then is hung
    shared_memory: bool = True  # HES_SHM_DISABLE=1 turns the co-located workers' buffers off

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PoolSettings:
        raw = env.get("HES_WORKER_TIMEOUT_S", "600")
        try:
            timeout = float(raw)
        except ValueError:
            timeout = math.nan
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"HES_WORKER_TIMEOUT_S: {raw!r} is not a number of seconds above 0")
        return cls(timeout, env.get(SHM_DISABLE, "") in ("", "0"))


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


_count_task = count_task  # coordinator/accounting.py: the local backend counts the same


Reply = tuple[bytes, np.ndarray | str | None, bytes]  # what WorkerActor.step returns


@dataclass
class Sent:
    """What `send` started: a call per live worker, the bytes so far, the task as sent."""
    refs: dict[int, ray.ObjectRef]
    rb: RoundBytes
    task: Task


class WorkerLost(RuntimeError):
    """A worker left the job while the round loop was repairing its replica."""


class RayPool:
    def __init__(self, specs: list[WorkerSpec], data: list[WorkerData], cpus: float, gpus: float,
                 counters: Counters, settings: PoolSettings | None = None, gpu_workers: int | None = None,
                 runtime_env: dict | None = None) -> None:
        """`gpus` GPUs for each of the first `gpu_workers` workers (all of them by default), none for the others:
        a worker computes on CUDA when Ray gives it a GPU (workers/actor.py). `data`: how each worker gets its
        training arrays (coordinator/ship_data.py); the bytes that took are counted once every worker has them.
        `runtime_env`: the job's cluster.runtime_env, uploaded (coordinator/runtime_env.py)."""
        self.n_workers = len(specs)
        self.runtime_env = runtime_env or {}
        self.specs, self.cpus, self.counters = specs, cpus, counters
        self.gpus = [gpus if gpu_workers is None or i < gpu_workers else 0.0 for i in range(len(specs))]
        self.settings = settings or PoolSettings.from_env()
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
        self.data = data  # how each worker gets its training arrays (coordinator/ship_data.py)
        self.shared: dict[int, SharedBuffer] = {}
        if self.settings.shared_memory:
            here = ray.get_runtime_context().get_node_id()
            nodes = placement_group_table(self.pg)["bundles_to_node_id"]
            self.shared = shared_buffers([i for i in range(len(specs)) if nodes.get(i) == here],
                                         specs[0].model.num_parameters)
        self.specs = [replace(sp, shared=self.shared[i].path) if i in self.shared else sp
                      for i, sp in enumerate(specs)]
        self.live = list(range(len(specs)))  # the slots in the job now; the others wait for a node
        self._members_sent = tuple(self.live)  # the live workers as the workers last heard them
        self.restarts = [0] * len(specs)  # each actor's restart count as last read from Ray
        self.recovering = 0
        self._round, self._deaths = 0, dict.fromkeys(range(len(specs)), 0)
        self._next_poll = 0.0
        try:
            self.actors = [self._spawn(i) for i in range(len(specs))]
            self._wait_ready()
            self.data_reports: list[DataReport] = ray.get([a.data.remote() for a in self.actors])
            self.counters.dataset_bytes = link_bytes(self.data_reports, data, ray.get_runtime_context().get_node_id())
        finally:
            for buf in self.shared.values():  # every actor has mapped its buffer (or failed): the names go
                buf.unlink()

    @property
    def alive(self) -> int:
        return len(self.live) - self.recovering

    @property
    def restarting(self) -> int:
        return self.n_workers - self.alive

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
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus[i], "scheduling_strategy": strategy,
                   "max_restarts": -1, "max_task_retries": 0,
                   "runtime_env": with_env_vars(self.runtime_env, worker_env(self.specs[i].model.num_parameters))}
        return WorkerActor.options(**options).remote(self.specs[i], self.data[i])  # type: ignore[attr-defined]

    overlaps = True  # the workers compute while the coordinator applies its own copy of the last decision

    def send(self, task: Task) -> Sent:
        """Start `task` on every live worker (the missing ones rejoin first when they are back); returns at once.
        The bytes sent are counted here."""
        self._round, self._deaths = task.round, dict.fromkeys(range(self.n_workers), 0)
        self._rejoin(task.round)
        task = self._with_members(task)
        rb = RoundBytes()
        header, decision = encode_task(task)
        arg = ray.put(decision) if len(decision) > PUT_THRESHOLD else decision
        refs = {i: self.actors[i].step.remote(header, arg) for i in self.live}
        _count_task(rb, task, header, decision, decision_label(task.decision, task.kind.label), len(refs))
        return Sent(refs, rb, task)

    def _with_members(self, task: Task) -> Task:
        """The task, carrying the live workers when they changed since the workers last heard them."""
        members = tuple(self.live)
        if members == self._members_sent:
            return replace(task, members=None)
        self._members_sent = members
        return replace(task, members=members)

    def collect(self, sent: Sent, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        """Every live worker's result for the task `send` started, ordered by worker; resyncs workers that need
        it. A full round that lost a worker is redone by the workers left, on the new split of the batch."""
        task, rb = sent.task, sent.rb
        refs = sent.refs
        while True:
            before = list(self.live)
            replies, late = self._gather(refs)
            results = {}
            for i, ref in refs.items():
                res = self._result(i, ref, task, state, rb, replies.get(i), 0.0 if i in late else None)
                if res is not None:
                    results[i] = res
            if not self.live:
                raise RuntimeError(f"round {task.round + 1}: every worker has left the job (no node for them)")
            if self.live == before or task.kind != RoundKind.FULL:
                return [results[i] for i in sorted(results)], rb
            task = self._with_members(replace(task, decision=Decision(task.round - 1, DecisionKind.NONE)))
            header, decision = encode_task(task)
            refs = {i: self.actors[i].step.remote(header, decision) for i in self.live}
            _count_task(rb, task, header, decision, task.kind.label, len(refs))

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.collect(self.send(task), task, state)

    def _gather(self, refs: dict[int, ray.ObjectRef]) -> tuple[dict[int, Reply], set[int]]:
        """The workers' replies, fetched together: one ray.wait and one ray.get for all of them, not one blocking
        get per worker in turn, a fixed cost per call that a round of many workers pays many times (BENCHMARKS.md,
        "Fan-out"); and the workers that did not answer within the call timeout, counted from the send. When a
        reply is an error (its actor died), none is returned: each worker's own get then finds out who died."""
        order = list(refs)
        ready, _ = ray.wait([refs[i] for i in order], num_returns=len(order),
                            timeout=self.settings.call_timeout_s)
        done = set(ready)
        answered = [i for i in order if refs[i] in done]
        late = {i for i in order if refs[i] not in done}
        try:
            values = ray.get([refs[i] for i in answered])
        except RayActorError:
            return {}, late
        return dict(zip(answered, values, strict=True)), late

    def _result(self, i: int, ref: ray.ObjectRef, task: Task, state: Callable[[], Sync], rb: RoundBytes,
                reply: Reply | None = None, timeout: float | None = None) -> Result | None:
        """Worker i's result for `task`, synced and redone if it needs it; None when it left the job. `reply`:
        its answer when it was fetched already; `timeout`: how long to wait for it (default: the call timeout)."""
        res = self._collect(i, ref, task, rb, reply, timeout)
        if res is None or res.status == Status.OK:
            return res
        redo = replace(task, decision=Decision(task.round - 1, DecisionKind.NONE))
        snapshot = state()
        for _ in range(MAX_ATTEMPTS):
            if not self._resync(i, snapshot, rb):
                return None
            res = self._rerun(i, redo, rb)
            if res is None or res.status == Status.OK:
                return res
        raise RuntimeError(f"worker {i} kept asking for the state in round {task.round + 1}")

    def _collect(self, i: int, ref: ray.ObjectRef, task: Task, rb: RoundBytes, reply: Reply | None = None,
                 timeout: float | None = None) -> Result | None:
        """Worker i's answer; NEED_SYNC when it died and came back (or restarted since its last call); None when
        it cannot come back and has left the job."""
        try:
            if reply is None:
                reply = ray.get(ref, timeout=self.settings.call_timeout_s if timeout is None else timeout)
            head, array, digest = reply
            if isinstance(array, str):
                assert array == SHARED, f"worker {i} returned {array!r}"
                array = self.shared[i].view()
        except (RayActorError, GetTimeoutError) as e:
            if isinstance(e, GetTimeoutError):  # hung: kill it; Ray restarts it, at version 0
                ray.kill(self.actors[i], no_restart=False)
            return Result(task.round, i, Status.NEED_SYNC) if self._recover(i) else None
        rb.add(task.kind.label, "up", payload_size(head, array))
        rb.add("sync", "up", len(digest))
        res = decode_result(head, array, digest, task.kind)
        if res.status == Status.NEED_SYNC:
            self._count_deaths(i)  # a restart between two calls, which no call saw fail
        return res

    def _count_deaths(self, i: int) -> ActorRecord:
        """Count worker i's deaths since we last looked (Ray's restart count); its record from Ray."""
        rec = actor_record(self.actors[i])
        died = rec.restarts - self.restarts[i]
        self.restarts[i] += died
        if rec.state == "DEAD":  # for good: it is replaced, and its last death counts too
            died += 1
            self.actors[i], self.restarts[i] = self._spawn(i), 0
        self._died(i, died)
        return rec

    def _died(self, i: int, n: int) -> None:
        self.counters.worker_failures += n
        self._deaths[i] += n
        if self._deaths[i] > MAX_DEATHS_PER_ROUND:
            raise RuntimeError(f"worker {i} died {self._deaths[i]} times in round {self._round + 1}; "
                               "it dies on every call, giving up")

    def _recover(self, i: int) -> bool:
        """Wait until worker i answers again (True), or until it cannot come back: it then leaves the job (False)."""
        self.recovering += 1
        try:
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            unplaced_since: float | None = None
            while True:
                if self._count_deaths(i).state == "ALIVE" and self._answers(i):
                    return True
                now = time.monotonic()
                if placement_group_table(self.pg)["bundles_to_node_id"].get(i):
                    unplaced_since = None
                elif unplaced_since is None:
                    unplaced_since = now
                if now > deadline or (unplaced_since is not None and now - unplaced_since >= UNPLACED_GRACE_S):
                    self._leave(i)
                    return False
                time.sleep(POLL_S)
        finally:
            self.recovering -= 1

    def _answers(self, i: int) -> bool:
        try:
            ray.get(self.actors[i].info.remote(), timeout=PROBE_S)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    def _leave(self, i: int) -> None:
        """Worker i leaves the job; Ray keeps its actor pending in its bundle until a node has room for it."""
        self.live.remove(i)
        self.counters.workers_changed(self._round + 1, len(self.live), self.n_workers)

    def _rejoin(self, t: int) -> None:
        """Missing workers whose actors are back join the job from round t (at most every REJOIN_POLL_S)."""
        if len(self.live) == self.n_workers or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + REJOIN_POLL_S
        back = []
        for i in range(self.n_workers):
            if i in self.live:
                continue
            rec = actor_record(self.actors[i])
            if rec.state == "DEAD":  # it will not be restarted: a new actor waits for its bundle instead
                self.actors[i], self.restarts[i] = self._spawn(i), 0
                self.counters.worker_failures += 1
            elif rec.state == "ALIVE" and self._answers(i):
                self.counters.worker_failures += rec.restarts - self.restarts[i]  # its deaths while out
                self.restarts[i] = rec.restarts
                back.append(i)
        if back:
            self.live = sorted(self.live + back)
            self.counters.workers_changed(t + 1, len(self.live), self.n_workers)

    def _resync(self, i: int, state: Sync, rb: RoundBytes) -> bool:
        """Send worker i the state (and the live workers); False when it left the job meanwhile."""
        data = encode_sync(replace(state, members=tuple(self.live)))
        for _ in range(MAX_ATTEMPTS):
            rb.add("sync", "down", len(data))
            try:
                ray.get(self.actors[i].sync.remote(data), timeout=self.settings.call_timeout_s)
                return True
            except (RayActorError, GetTimeoutError) as e:
                if isinstance(e, GetTimeoutError):
                    ray.kill(self.actors[i], no_restart=False)
                if not self._recover(i):
                    return False
        raise RuntimeError(f"worker {i} could not be synced in round {self._round + 1}")

    def _rerun(self, i: int, task: Task, rb: RoundBytes) -> Result | None:
        header, decision = encode_task(task)
        _count_task(rb, task, header, decision, task.kind.label)
        return self._collect(i, self.actors[i].step.remote(header, decision), task, rb)

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None:
        """The round loop's repair of a replica that differs (its rerun follows)."""
        self._resync(worker, state, rb)

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        res = self._rerun(worker, task, rb) if worker in self.live else None
        if res is None:
            raise WorkerLost(f"worker {worker} left the job while its replica was being repaired in round "
                             f"{task.round + 1}")
        return res

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)
        for buf in self.shared.values():
            buf.unlink()
        self.shared = {}  # unmapped once the last view of a result is gone (a finished Job keeps its pool)


def ray_pool(cfg: JobConfig, parts: JobParts, counters: Counters, gpu_workers: int | None = None,
             runtime_env: dict | None = None) -> RayPool:
    """The Job pool factory for cluster.workers >= 1. `gpu_workers`: only the first so many workers get
    cluster.gpus_per_worker (a mixed job, bench/gpu_check.py); all of them by default. `runtime_env`: the job's
    cluster.runtime_env uploaded already (the coordinator actor's); None uploads it from here."""
    n = cfg.cluster.workers
    specs = [WorkerSpec(parts.model, parts.hyper, parts.schedule, cfg.seed, worker_k(cfg), cfg.hybrid.combine, i, n,
                        max(1, int(cfg.cluster.cpus_per_worker)), from_seed=cfg.model.init_from is None)
             for i in range(n)]
    arrays = [parts.data.stored_train] * n
    if parts.partitions is not None:  # a worker is sent only its partition
        arrays = [parts.data.stored_train.take(p) for p in parts.partitions]
    return RayPool(specs, ship(arrays, recipe(cfg), parts.partitions), cfg.cluster.cpus_per_worker,
                   cfg.cluster.gpus_per_worker, counters, PoolSettings.from_env(), gpu_workers,
                   runtime_env if runtime_env is not None else resolve(cfg.cluster.runtime_env))
