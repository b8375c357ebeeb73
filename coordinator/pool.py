"""The in-process pool (`cluster.workers: 0`): one replica in this process, nothing on the wire.

It runs the replica code the Ray workers run, except that the replica takes the coordinator's state
instead of re-applying each decision; a 1-worker Ray job, whose replica applies every decision itself,
ends with the same parameters as the in-process job of the same config, to the bit (tests/coordinator).
No payload crosses a process boundary, so it counts 0 B.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from coordinator.accounting import RoundBytes
from workers.hybrid import Decision, DecisionKind
from workers.messages import Result, Status, Sync, Task
from workers.replica import Replica


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
