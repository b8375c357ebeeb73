"""The in-process pools: `LocalPool` (`cluster.workers: 0`), one replica in this process, nothing on the wire;
and `ReplicaPool` (`cluster.backend: local`), a Ray job's N workers run here one after another.

It runs the replica code the Ray workers run, except that the replica takes the coordinator's state
instead of re-applying each decision; a 1-worker Ray job, whose replica applies every decision itself,
ends with the same parameters as the in-process job of the same config, to the bit (tests/coordinator).
No payload crosses a process boundary, so it counts 0 B.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch

from coordinator.accounting import RoundBytes, count_task, decision_label
from workers.messages import (
    Result,
    Status,
    Sync,
    Task,
    decode_result,
    decode_sync,
    decode_task,
    encode_result,
    encode_sync,
    encode_task,
    payload_size,
)
from workers.replica import Replica
from workers.state import Decision, DecisionKind


class LocalPool:
    n_workers = 1

    def __init__(self, replica: Replica, shares_state: bool = True) -> None:
        self.replica = replica
        # In one process the coordinator has applied the last decision already: the replica takes that state
        # (two array copies) instead of regenerating the same update (a seed's noise, a descent step). Not
        # for localsgd, whose replica holds local steps that the coordinator does not have.
        self.shares_state = shares_state

    overlaps = False  # one thread: nothing runs while the replica works

    def send(self, task: Task) -> Task:
        return task  # the work happens in collect, after the coordinator has applied the last decision

    def collect(self, sent: Task, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.round(task, state)

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        rb = RoundBytes()
        if self.shares_state and task.decision.kind != DecisionKind.NONE:
            self.replica.sync(state())
            task = replace(task, decision=Decision(task.round - 1, DecisionKind.NONE))
        result = self.replica.handle(task)
        if result.status == Status.NEED_SYNC:
            self.replica.sync(state())
            result = self.replica.handle(replace(task, decision=Decision(task.round - 1, DecisionKind.NONE)))
        return [result], rb

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None:
        self.replica.sync(state)

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        return self.replica.handle(task)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Compute on n threads, as a worker actor with that many CPUs does (its matmuls' sums are then the same),
    and give the process its own setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ReplicaPool:
    """`cluster.backend: local`: the N replicas of a Ray job, in this process, each on its own data, each applying
    every decision itself, as a worker actor does; one after another, so N workers need one core.

    Every message takes the path a Ray worker's takes, through the wire encoding (workers/messages.py): the task
    is encoded, decoded by the replica's side, its result encoded and decoded, so the replicas see exactly the
    bytes an actor would (float32 losses, copied arrays), and the bytes are counted at the same points and in the
    same way as coordinator/ray_pool.py counts them (accounting.count_task and payload_size): result.json and
    the final parameters are the Ray job's, to the bit. No worker dies or leaves here; a replica that asks for
    the state (a resumed job, model.init_from) gets a sync, counted as sync, as in the Ray pool."""

    overlaps = False  # one thread: the coordinator applies its decision after the workers' turn

    def __init__(self, replicas: list[Replica], threads: int = 1) -> None:
        self.replicas, self.threads = replicas, threads
        self.n_workers = len(replicas)
        self.members = tuple(range(self.n_workers))

    @property
    def alive(self) -> int:
        return self.n_workers

    restarting = 0

    def send(self, task: Task) -> tuple[Task, RoundBytes]:
        return task, RoundBytes()  # the work happens in collect (nothing would run beside it here)

    def collect(self, sent: tuple[Task, RoundBytes], task: Task,
                state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        task, rb = sent
        header, decision = encode_task(task)
        count_task(rb, task, header, decision, decision_label(task.decision, task.kind.label), self.n_workers)
        results = []
        with torch_threads(self.threads):
            for i in range(self.n_workers):
                res = self._step(i, header, decision, task, rb)
                if res.status != Status.OK:  # as RayPool._result: the state, then the round again
                    self._resync(i, state(), rb)
                    res = self._rerun(i, replace(task, decision=Decision(task.round - 1, DecisionKind.NONE)), rb)
                    if res.status != Status.OK:
                        raise RuntimeError(f"worker {i} kept asking for the state in round {task.round + 1}")
                results.append(res)
        return results, rb

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.collect(self.send(task), task, state)

    def _step(self, i: int, header: bytes, decision: bytes, task: Task, rb: RoundBytes) -> Result:
        """Worker i's call, as WorkerActor.step runs it, and its reply counted as RayPool._collect counts it."""
        head, array, digest = encode_result(self.replicas[i].handle(decode_task(header, decision)), task.kind)
        if array is not None:
            array = np.array(array, copy=True)  # the reply is the coordinator's own, not a view of the replica
        rb.add(task.kind.label, "up", payload_size(head, array))
        rb.add("sync", "up", len(digest))
        return decode_result(head, array, digest, task.kind)

    def _resync(self, i: int, state: Sync, rb: RoundBytes) -> None:
        data = encode_sync(replace(state, members=self.members))
        rb.add("sync", "down", len(data))
        self.replicas[i].sync(decode_sync(data))

    def _rerun(self, i: int, task: Task, rb: RoundBytes) -> Result:
        header, decision = encode_task(task)
        count_task(rb, task, header, decision, task.kind.label)
        return self._step(i, header, decision, task, rb)

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None:
        self._resync(worker, state, rb)

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        with torch_threads(self.threads):
            return self._rerun(worker, task, rb)

    def close(self) -> None:
        pass
