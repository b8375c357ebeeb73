"""The round protocol every pool that encodes its messages runs, written once (coordinator/pool.py ReplicaPool, the
local backend; coordinator/ray_pool.py RayPool): a task encoded and its bytes counted, a reply counted and decoded,
and the repair of a worker that asks for the state: the state sent (with the live workers), then the round again
without its decision, at most MAX_ATTEMPTS times. A transport supplies how one call and one sync reach a worker.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from coordinator.accounting import RoundBytes, count_task
from workers import messages
from workers.messages import Result, RoundKind, Status, Sync, Task
from workers.state import Decision, DecisionKind

MAX_ATTEMPTS = 6  # sync-and-rerun rounds of one worker in one round without a death in between
Reply = tuple[bytes, np.ndarray | None, bytes]  # what a worker returns for a task (WorkerActor.step, encode_result)


class WorkerLost(RuntimeError):
    """A worker left the job while the round loop was repairing its replica."""


def without_decision(task: Task) -> Task:
    """The task again for a worker that has just been given the state: the decision is in the state already."""
    return replace(task, decision=Decision(task.round - 1, DecisionKind.NONE))


def encode_counted(task: Task, rb: RoundBytes, label: str, workers: int = 1) -> tuple[bytes, bytes]:
    """The task's header and decision bytes, counted once per worker that receives them (accounting.count_task)."""
    header, decision = messages.encode_task(task)
    count_task(rb, task, header, decision, label, workers)
    return header, decision


def decode_counted(reply: Reply, kind: RoundKind, rb: RoundBytes) -> Result:
    """A worker's reply, its payload counted to the round's kind and its digest to sync."""
    head, array, digest = reply
    rb.add(kind.label, "up", messages.payload_size(head, array))
    rb.add("sync", "up", len(digest))
    res = messages.decode_result(head, array, digest, kind)
    if res.ring is not None:  # what the worker's allreduce moved among the workers
        rb.ring_sent[kind.label] += res.ring[0]
        rb.ring_received[kind.label] += res.ring[1]
    return res


class PoolCore:
    """The part of a pool that does not depend on how messages travel. A transport subclass sets `n_workers` and
    `live` (the worker slots in the job now) and gives `_step` (one task to one worker, its reply decoded and
    counted; None when the worker left the job) and `_deliver_sync` (the encoded state to one worker; False when
    it left)."""

    n_workers: int
    live: list[int]
    reduces = False  # cluster.full_rounds allreduce (coordinator/ray_pool.py): pull reads the replicas' state

    def pull(self, version: int, rb: RoundBytes, source: int | None = None) -> Sync:
        raise RuntimeError(f"{type(self).__name__} keeps no state apart from the coordinator's: nothing to pull")

    @property
    def recovering(self) -> int:
        """Workers being waited for after a death (RayPool); none in this process."""
        return 0

    @property
    def alive(self) -> int:
        """Workers that are in the job and answering."""
        return len(self.live) - self.recovering

    @property
    def restarting(self) -> int:
        """Workers recovering from a death, or out of the job waiting for a node."""
        return self.n_workers - self.alive

    def send(self, task: Task) -> Any:
        raise NotImplementedError

    def collect(self, sent: Any, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        raise NotImplementedError

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.collect(self.send(task), task, state)

    def _step(self, i: int, header: bytes, decision: bytes, task: Task, rb: RoundBytes) -> Result | None:
        raise NotImplementedError

    def _deliver_sync(self, i: int, data: bytes, rb: RoundBytes) -> bool:
        raise NotImplementedError

    def _resync(self, i: int, state: Sync, rb: RoundBytes) -> bool:
        """Send worker i the state and the live workers; False when it left the job meanwhile."""
        return self._deliver_sync(i, messages.encode_sync(replace(state, members=tuple(self.live))), rb)

    def _rerun(self, i: int, task: Task, rb: RoundBytes) -> Result | None:
        header, decision = encode_counted(task, rb, task.kind.label)
        return self._step(i, header, decision, task, rb)

    def _repaired(self, i: int, res: Result | None, task: Task, state: Callable[[], Sync],
                  rb: RoundBytes) -> Result | None:
        """Worker i's result for `task`: as it came, or, when it asked for the state, after a resync and the round
        again; None when it left the job."""
        if res is None or res.status == Status.OK:
            return res
        again, snapshot = without_decision(task), state()
        for _ in range(MAX_ATTEMPTS):
            if not self._resync(i, snapshot, rb):
                return None
            res = self._rerun(i, again, rb)
            if res is None or res.status == Status.OK:
                return res
        raise RuntimeError(f"worker {i} kept asking for the state in round {task.round + 1}")

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None:
        """The round loop's repair of a replica that differs (its rerun follows)."""
        self._resync(worker, state, rb)

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        res = self._rerun(worker, task, rb) if worker in self.live else None
        if res is None:
            raise WorkerLost(f"worker {worker} left the job while its replica was being repaired in round "
                             f"{task.round + 1}")
        return res
