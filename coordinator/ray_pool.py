"""The Ray pool: the round protocol (coordinator/pool_core.py) over Ray worker actors (coordinator/ray_workers.py),
with the workers in the job as coordinator/membership.py keeps them.

Bytes are the lengths of the encoded payloads (workers/messages.py) each worker receives or returns:
a large decision (a full round's gradient) is `ray.put` once and its reference passed to every worker,
but every worker still receives it, so it counts once per worker, e.g. 238,510 params * 4 B = 954,040 B
(+ 1 B kind) per worker. Ray's own framing is not payload; `make bench` measures it on the wire.
Workers on the coordinator's own node return their arrays through shared memory (coordinator/shared_buffers.py).
With cluster.relays, `send` makes one call per node, to its relay (coordinator/relays.py), which returns its
workers' replies together; a worker whose call failed there is recovered as one whose direct call failed.

Faults. Worker actors restart as often as they die (`max_restarts=-1`); a restarted one comes back at version 0
and is resynced (bytes counted as sync); its deaths are counted by the membership. A worker that does not answer a
call within `HES_WORKER_TIMEOUT_S` is taken for hung: killed, restarted, resynced.

Shrink and grow. A worker that cannot come back leaves the job instead of failing it (coordinator/membership.py):
the rounds go on with the workers left, which split each minibatch among themselves (a full round that lost a
worker is redone on the new split, so every example of the batch counts once; a stochastic round takes the argmin
over the live workers' trials). A worker whose actor is back rejoins at the next round: it is synced (counted as
sync) and the shards are re-split. `alive` and `restarting` count the live workers and the others (recovering, or
waiting for a node).

Allreduce (cluster.full_rounds allreduce). The live workers form a gloo group (workers/collective.py) before the
first full round and again whenever the live workers change or a collective failed: the first live worker opens a
store on a free port of its node, every live worker joins it, a new generation each time. A full round (or a
localsgd average) returns only scalars; the arrays stay on the workers. A round whose collective failed (a worker
died, hung or came back) is redone by every live worker over a new group, after the dead one recovered or left and
the restarted ones were given the state (read from a live replica, `pull`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError  # RayActorError: ActorDied..., ActorUnavailable...

from coordinator.accounting import Counters, RoundBytes, decision_label
from coordinator.config import JobConfig
from coordinator.membership import Membership
from coordinator.parts import JobParts, worker_k
from coordinator.pool_core import MAX_ATTEMPTS, PoolCore, decode_counted, encode_counted, without_decision
from coordinator.ray_workers import (
    INLINE_RETURN_LIMIT,
    NOT_NICED,
    ActorRecord,
    ClusterTooSmall,
    RayWorkers,
    actor_record,
    worker_env,
)
from coordinator.relays import Failed, RelayCalls, Relays, use_relays
from coordinator.rounds import ReplicasLost
from coordinator.runtime_env import resolve, with_env_vars
from coordinator.shared_buffers import SHM_DISABLE
from coordinator.ship_data import recipe, ship
from workers.actor import WorkerData, WorkerSpec
from workers.collective import JOIN_TIMEOUT_S, GroupSpec
from workers.messages import Result, RoundKind, Status, Sync, Task, decode_sync, result_status

__all__ = ["NOT_NICED", "SHM_DISABLE", "ActorRecord", "ClusterTooSmall", "PoolSettings", "RayPool", "actor_record",
           "ray_pool", "worker_env"]

PUT_THRESHOLD = 4096  # decisions larger than this go through the object store once per round
REDUCED_KINDS = (RoundKind.FULL, RoundKind.AVERAGE)  # the rounds allreduce sums among the workers
SECURE_AFTER_S = 0.5  # allreduce: a round slower than this looks whether a worker is restarting (one GCS call each)


@dataclass(frozen=True)
class PoolSettings:
    """What the pool reads from the coordinator's environment, once, when it is made."""
    call_timeout_s: float = 600.0  # HES_WORKER_TIMEOUT_S: a worker that has not answered a call by then is hung
    shared_memory: bool = True  # HES_SHM_DISABLE=1 turns the co-located workers' buffers off
    # HES_COLLECTIVE_TIMEOUT_S: how long one allreduce waits for a peer that hangs or lost its link
    collective_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PoolSettings:
        return cls(_seconds(env, "HES_WORKER_TIMEOUT_S", "600"), env.get(SHM_DISABLE, "") in ("", "0"),
                   _seconds(env, "HES_COLLECTIVE_TIMEOUT_S", "30"))


def _seconds(env: Mapping[str, str], name: str, default: str) -> float:
    raw = env.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name}: {raw!r} is not a number of seconds above 0")
    return value


Reply = tuple[bytes, np.ndarray | str | None, bytes]  # what WorkerActor.step returns (str: in the shared buffer)


@dataclass
class Sent:
    """What `send` started: a call per live worker (or per node, through its relay), the bytes so far, the task
    as sent."""
    refs: dict[int, ray.ObjectRef] | RelayCalls
    rb: RoundBytes
    task: Task


class RayPool(PoolCore):
    overlaps = True  # the workers compute while the coordinator applies its own copy of the last decision

    def __init__(self, specs: list[WorkerSpec], data: list[WorkerData], cpus: float, gpus: float,
                 counters: Counters, settings: PoolSettings | None = None, gpu_workers: int | None = None,
                 runtime_env: dict | None = None, relays: bool | str = False) -> None:
        """The worker actors (coordinator/ray_workers.py RayWorkers: `data`, `gpus`, `gpu_workers` and
        `runtime_env` are its), the job's membership and, with `relays` (cluster.relays), a relay per node."""
        self.n_workers, self.counters = len(specs), counters
        self.settings = settings or PoolSettings.from_env()
        self.workers = RayWorkers(specs, data, cpus, gpus, counters, self.settings.shared_memory, gpu_workers,
                                  runtime_env)
        self.membership = Membership(self.workers, counters)
        self.live = self.membership.live  # the same list: the membership changes it in place
        self._members_sent = tuple(self.live)  # the live workers as the workers last heard them
        self.reduces = any(sp.allreduce for sp in specs)
        self._group: tuple[int, ...] | None = None  # allreduce: the members of the workers' group, when formed
        self._generation = 0
        self.calls = self.last_calls = 0  # the remote calls `send` made: in all, and for the last round
        self.relays: Relays | None = None
        if use_relays(relays, self.workers.nodes()):
            env = with_env_vars(self.workers.runtime_env,
                                {"RAY_max_direct_call_object_size": str(INLINE_RETURN_LIMIT), **NOT_NICED})
            self.relays = Relays(self.workers.nodes, self.workers.actors, env, self.settings.call_timeout_s)
            try:
                self.relays.start(self.live)
            except BaseException:
                self.close()
                raise

    @property
    def actors(self) -> list[ray.actor.ActorHandle]:
        return self.workers.actors

    @property
    def recovering(self) -> int:
        return self.membership.recovering

    def send(self, task: Task) -> Sent:
        """Start `task` on every live worker (the missing ones rejoin first when they are back); returns at once.
        The bytes sent are counted here."""
        self.membership.begin_round(task.round)
        task = self._with_members(task)
        if self.reduces and task.kind in REDUCED_KINDS:
            self._form_group()
        rb = RoundBytes()
        header, decision = encode_counted(task, rb, decision_label(task.decision, task.kind.label), len(self.live))
        arg = ray.put(decision) if len(decision) > PUT_THRESHOLD else decision
        refs: dict[int, ray.ObjectRef] | RelayCalls
        if self.relays is not None:
            refs = self.relays.send(self.live, header, arg)
            self.last_calls = len(refs.calls)
        else:
            refs = {i: self.workers.step(i, header, arg) for i in self.live}
            self.last_calls = len(refs)
        self.calls += self.last_calls
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
        reduced = self.reduces and task.kind in REDUCED_KINDS
        failures = 0
        while True:
            before = list(self.live)
            if self.reduces:
                self._secure_state(refs, state)
            replies, late = self._gather(refs)
            slots = refs.slots if isinstance(refs, RelayCalls) else list(refs)
            if self.reduces and any(not isinstance(r := replies.get(i), tuple) or result_status(r[0]) != Status.OK
                                    for i in slots):
                state()  # a worker died, hangs or came back empty: read the state now, while a replica holds it
            results, failed = {}, False
            for i in slots:
                ref = refs.get(i) if isinstance(refs, dict) else None
                res = self._collect(i, ref, task, rb, replies.get(i), 0.0 if i in late else None)
                if reduced and res is not None and res.status != Status.OK:
                    failed = True  # the whole round is redone together: a lone rerun would wait for its peers
                    if res.status == Status.NEED_SYNC:
                        self._resync(i, state(), rb)
                    continue
                res = self._repaired(i, res, task, state, rb)
                if res is not None:
                    results[i] = res
            if not self.live:
                raise RuntimeError(f"round {task.round + 1}: every worker has left the job (no node for them)")
            if not failed and (self.live == before or task.kind != RoundKind.FULL and not reduced):
                return [results[i] for i in sorted(results)], rb
            if failed:
                failures += 1
                if failures > MAX_ATTEMPTS:
                    raise RuntimeError(f"round {task.round + 1}: the workers' allreduce failed {failures} times "
                                       f"(HES_COLLECTIVE_TIMEOUT_S {self.settings.collective_timeout_s:g} s)")
            if reduced:
                self._group = None  # spent: a new one over the live workers
            task = self._with_members(without_decision(task))
            if reduced:
                self._form_group()
            header, decision = encode_counted(task, rb, task.kind.label, len(self.live))
            refs = {i: self.workers.step(i, header, decision) for i in self.live}

    def _secure_state(self, refs: dict[int, ray.ObjectRef] | RelayCalls, state: Callable[[], Sync]) -> None:
        """allreduce: when some worker has not answered within SECURE_AFTER_S and Ray has it restarting or dead, read
        the state from a live replica now: a call to a restarting actor waits for it, and a second death meanwhile
        would take the last replica that holds the state."""
        if isinstance(refs, RelayCalls):
            calls = [(slots, ref) for _, slots, ref in refs.calls]
        else:
            calls = [([i], ref) for i, ref in refs.items()]
        ready, _ = ray.wait([ref for _, ref in calls], num_returns=len(calls), timeout=SECURE_AFTER_S)
        done = set(ready)
        waiting = [i for slots, ref in calls if ref not in done for i in slots]
        if any(self.workers.record(i).state != "ALIVE" for i in waiting):
            state()

    def _form_group(self) -> None:
        """A gloo group over the live workers, unless they form it already. When a member fails to join, the group
        stays unformed: the round's collective fails, the member's death is found, and the group is formed again."""
        members = tuple(self.live)
        if self._group == members:
            return
        ranks = members  # rank = place among the live slots, which RayWorkers lays out by node
        self._generation += 1
        self._group = None
        try:
            host, port = ray.get(self.workers.actors[ranks[0]].open_store.remote(),
                                 timeout=self.settings.call_timeout_s)
            ray.get([self.workers.actors[i].join.remote(
                GroupSpec(self._generation, rank, len(ranks), host, port, self.settings.collective_timeout_s))
                for rank, i in enumerate(ranks)], timeout=JOIN_TIMEOUT_S + self.settings.call_timeout_s)
        except (RayError, GetTimeoutError):
            return
        self._group = members

    def pull(self, version: int, rb: RoundBytes, source: int | None = None) -> Sync:
        """A live replica's state at `version` (worker `source` first when given), counted as sync up."""
        order = ([source] if source in self.live else []) + [i for i in self.live if i != source]
        why = []
        for i in order:
            try:
                data = ray.get(self.workers.actors[i].pull.remote(version), timeout=self.settings.call_timeout_s)
            except (RayActorError, GetTimeoutError) as e:
                why.append(f"worker {i} did not answer ({type(e).__name__})")
                continue
            if data is not None:
                rb.add("sync", "up", len(data))
                return decode_sync(data)
            why.append(f"worker {i} holds another round")
        raise ReplicasLost(f"cluster.full_rounds allreduce: no live worker holds the state of round {version} "
                           f"({'; '.join(why)}): every replica was lost at once")

    def _gather(self, refs: dict[int, ray.ObjectRef] | RelayCalls) -> tuple[dict[int, Reply | Failed], set[int]]:
        """The workers' replies, fetched together: one ray.wait and one ray.get for all of them, not one blocking
        get per worker in turn, a fixed cost per call that a round of many workers pays many times (BENCHMARKS.md,
        "Fan-out"); and the workers that did not answer within the call timeout, counted from the send. When a
        reply is an error (its actor died), none is returned: each worker's own get then finds out who died.
        Through relays: their answers, one per node, each worker's failure marked in it."""
        if isinstance(refs, RelayCalls):
            assert self.relays is not None
            return self.relays.gather(refs), set()
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

    def _collect(self, i: int, ref: ray.ObjectRef | None, task: Task, rb: RoundBytes,
                 reply: Reply | Failed | None = None, timeout: float | None = None) -> Result | None:
        """Worker i's answer; NEED_SYNC when it died and came back (or restarted since its last call); None when
        it cannot come back and has left the job. `reply`: its answer when it was fetched already (a relay's
        marker when its call failed); `timeout`: how long to wait for it (default: the call timeout)."""
        if isinstance(reply, Failed):
            return self._lost(i, task, reply.hung)
        try:
            if reply is None:
                assert ref is not None, f"worker {i}: neither a reply nor a call"
                got: Reply = ray.get(ref, timeout=self.settings.call_timeout_s if timeout is None else timeout)
            else:
                got = reply
            head, array, digest = got
            array = self.workers.array(i, array)
        except (RayActorError, GetTimeoutError) as e:
            return self._lost(i, task, isinstance(e, GetTimeoutError))
        res = decode_counted((head, array, digest), task.kind, rb)
        if res.status == Status.NEED_SYNC:
            self.membership.count_deaths(i)  # a restart between two calls, which no call saw fail
        return res

    def _lost(self, i: int, task: Task, hung: bool) -> Result | None:
        """Worker i's call failed: NEED_SYNC once it answers again, None when it left the job."""
        if hung:  # kill it; Ray restarts it, at version 0
            self.workers.kill(i)
        return Result(task.round, i, Status.NEED_SYNC) if self.membership.recover(i) else None

    def _step(self, i: int, header: bytes, decision: bytes, task: Task, rb: RoundBytes) -> Result | None:
        return self._collect(i, self.workers.step(i, header, decision), task, rb)

    def _deliver_sync(self, i: int, data: bytes, rb: RoundBytes) -> bool:
        """The encoded state to worker i, again after a death; False when it left the job meanwhile."""
        for _ in range(MAX_ATTEMPTS):
            rb.add("sync", "down", len(data))
            try:
                ray.get(self.workers.sync(i, data), timeout=self.settings.call_timeout_s)
                return True
            except (RayActorError, GetTimeoutError) as e:
                if isinstance(e, GetTimeoutError):
                    self.workers.kill(i)
                if not self.membership.recover(i):
                    return False
        raise RuntimeError(f"worker {i} could not be synced in round {self.membership.round + 1}")

    def close(self) -> None:
        if self.relays is not None:
            self.relays.close()
        self.workers.close()


def ray_pool(cfg: JobConfig, parts: JobParts, counters: Counters, gpu_workers: int | None = None,
             runtime_env: dict | None = None) -> RayPool:
    """The Job pool factory for cluster.workers >= 1. `gpu_workers`: only the first so many workers get
    cluster.gpus_per_worker (a mixed job, bench/gpu_check.py); all of them by default. `runtime_env`: the job's
    cluster.runtime_env uploaded already (the coordinator actor's); None uploads it from here."""
    n = cfg.cluster.workers
    specs = [WorkerSpec(parts.model, parts.hyper, parts.schedule, cfg.seed, worker_k(cfg), cfg.hybrid.combine, i, n,
                        max(1, int(cfg.cluster.cpus_per_worker)), from_seed=cfg.model.init_from is None,
                        allreduce=cfg.cluster.full_rounds == "allreduce")
             for i in range(n)]
    arrays = [parts.data.stored_train] * n
    if parts.partitions is not None:  # a worker is sent only its partition
        arrays = [parts.data.stored_train.take(p) for p in parts.partitions]
    return RayPool(specs, ship(arrays, recipe(cfg), parts.partitions), cfg.cluster.cpus_per_worker,
                   cfg.cluster.gpus_per_worker, counters, PoolSettings.from_env(), gpu_workers,
                   runtime_env if runtime_env is not None else resolve(cfg.cluster.runtime_env),
                   cfg.cluster.relays)
