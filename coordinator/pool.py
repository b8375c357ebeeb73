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

import numpy as np
import torch

from coordinator.accounting import RoundBytes, decision_label
from coordinator.pool_core import PoolCore, decode_counted, encode_counted, without_decision
from workers.messages import Result, Status, Sync, Task, decode_sync, decode_task, encode_result
from workers.replica import Replica
from workers.state import DecisionKind


class LocalPool:
    n_workers = 1
    alive, restarting = 1, 0  # the one replica lives in this process

    def __init__(self, replica: Replica, shares_state: bool = True) -> None:
        self.replica = replica
        # In one process the coordinator has applied the last decision already: the replica takes that state
        # (two array copies) instead of regenerating the same update (a seed's noise, a descent step). Not
        # for localsgd, whose replica holds local steps that the coordinator does not have.
        self.shares_state = shares_state

    overlaps = False  # one thread: nothing runs while the replica works
    reduces = False  # no allreduce in this process

    def pull(self, version: int, rb: RoundBytes, source: int | None = None) -> Sync:
        raise RuntimeError("the in-process pool keeps the coordinator's state: there is nothing to pull")

    def send(self, task: Task) -> Task:
        return task  # the work happens in collect, after the coordinator has applied the last decision

    def collect(self, sent: Task, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.round(task, state)

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        rb = RoundBytes()
        if self.shares_state and task.decision.kind != DecisionKind.NONE:
            self.replica.sync(state())
            task = without_decision(task)
        result = self.replica.handle(task)
        if result.status == Status.NEED_SYNC:
            self.replica.sync(state())
            result = self.replica.handle(without_decision(task))
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


class ReplicaPool(PoolCore):
    """`cluster.backend: local`: the N replicas of a Ray job, in this process, each on its own data, each applying
    every decision itself, as a worker actor does; one after another, so N workers need one core.

    Every message takes the path a Ray worker's takes, through the wire encoding (workers/messages.py): the task
    is encoded, decoded by the replica's side, its result encoded and decoded, so the replicas see exactly the
    bytes an actor would (float32 losses, copied arrays), and the bytes are counted at the same points and in the
    same way as coordinator/ray_pool.py counts them (coordinator/pool_core.py): result.json and the final
    parameters are the Ray job's, to the bit. No worker dies or leaves here; a replica that asks for the state
    (a resumed job, model.init_from) gets a sync, counted as sync, as in the Ray pool."""

    overlaps = False  # one thread: the coordinator applies its decision after the workers' turn

    def __init__(self, replicas: list[Replica], threads: int = 1) -> None:
        self.replicas, self.threads = replicas, threads
        self.n_workers = len(replicas)
        self.live = list(range(self.n_workers))

    def send(self, task: Task) -> tuple[Task, RoundBytes]:
        return task, RoundBytes()  # the work happens in collect (nothing would run beside it here)

    def collect(self, sent: tuple[Task, RoundBytes], task: Task,
                state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        task, rb = sent
        header, decision = encode_counted(task, rb, decision_label(task.decision, task.kind.label), self.n_workers)
        results = []
        with torch_threads(self.threads):
            for i in range(self.n_workers):
                res = self._repaired(i, self._step(i, header, decision, task, rb), task, state, rb)
                assert res is not None  # a replica in this process never leaves the job
                results.append(res)
        return results, rb

    def _step(self, i: int, header: bytes, decision: bytes, task: Task, rb: RoundBytes) -> Result:
        """Worker i's call, as WorkerActor.step runs it, and its reply counted as RayPool counts it."""
        head, array, digest = encode_result(self.replicas[i].handle(decode_task(header, decision)), task.kind)
        if array is not None:
            array = np.array(array, copy=True)  # the reply is the coordinator's own, not a view of the replica
        return decode_counted((head, array, digest), task.kind, rb)

    def _deliver_sync(self, i: int, data: bytes, rb: RoundBytes) -> bool:
        rb.add("sync", "down", len(data))
        self.replicas[i].sync(decode_sync(data))
        return True

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        with torch_threads(self.threads):
            return super().rerun(worker, task, rb)

    def close(self) -> None:
        pass
