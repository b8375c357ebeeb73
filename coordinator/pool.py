"""The in-process pool (`cluster.workers: 0`): one replica in this process, nothing on the wire.

It runs exactly the replica code the Ray workers run, so a 1-worker Ray job and an in-process job of
the same config end with the same parameters. No payload crosses a process boundary, so it counts 0 B.
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

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        rb = RoundBytes()
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
