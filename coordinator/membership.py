"""Who is in a Ray job: each worker's deaths counted from Ray's record, a worker that cannot come back leaves the
job, one whose actor is back rejoins it (coordinator/ray_pool.py runs the rounds with the workers `live` names).

Every death is counted once in `Counters.worker_failures`, from Ray's own record of the actor (its restart count in
the GCS actor table, which also sees a death between two calls), plus one for an actor that died for good and was
replaced. A worker that dies more than MAX_DEATHS_PER_ROUND times in one round ends the job with a message naming it.
A worker leaves when its placement-group bundle has had no node for UNPLACED_GRACE_S or it is not back
RESTART_TIMEOUT_S after it died; the membership looks for it every REJOIN_POLL_S and it rejoins at the next round.
"""
from __future__ import annotations

import time

from coordinator.accounting import Counters
from coordinator.ray_workers import READY_TIMEOUT_S, ActorRecord, RayWorkers

MAX_DEATHS_PER_ROUND = 5  # a worker that dies more often within one round ends the job
RESTART_TIMEOUT_S = READY_TIMEOUT_S  # a worker not back this long after it died leaves the job
UNPLACED_GRACE_S = 5.0  # a worker whose bundle has had no node this long leaves the job
REJOIN_POLL_S = 5.0  # how often a shrunk job looks for its missing workers (one GCS call each)
POLL_S = 0.2  # between two looks at a recovering worker


class Membership:
    def __init__(self, workers: RayWorkers, counters: Counters) -> None:
        self.workers, self.counters = workers, counters
        self.n_workers = len(workers.actors)
        self.live = list(range(self.n_workers))  # the slots in the job now, changed in place; the others wait
        self.restarts = [0] * self.n_workers  # each actor's restart count as last read from Ray
        self.recovering = 0
        self.round, self._deaths = 0, dict.fromkeys(range(self.n_workers), 0)
        self._next_poll = 0.0

    def begin_round(self, t: int) -> None:
        """Round t starts: its deaths are counted afresh, and the missing workers that are back rejoin."""
        self.round, self._deaths = t, dict.fromkeys(range(self.n_workers), 0)
        self._rejoin(t)

    def count_deaths(self, i: int) -> ActorRecord:
        """Count worker i's deaths since we last looked (Ray's restart count); its record from Ray."""
        rec = self.workers.record(i)
        died = rec.restarts - self.restarts[i]
        self.restarts[i] += died
        if rec.state == "DEAD":  # for good: it is replaced, and its last death counts too
            died += 1
            self.workers.replace_actor(i)
            self.restarts[i] = 0
        self._died(i, died)
        return rec

    def _died(self, i: int, n: int) -> None:
        self.counters.worker_failures += n
        self._deaths[i] += n
        if self._deaths[i] > MAX_DEATHS_PER_ROUND:
            raise RuntimeError(f"worker {i} died {self._deaths[i]} times in round {self.round + 1}; "
                               "it dies on every call, giving up")

    def recover(self, i: int) -> bool:
        """Wait until worker i answers again (True), or until it cannot come back: it then leaves the job (False)."""
        self.recovering += 1
        try:
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            unplaced_since: float | None = None
            while True:
                if self.count_deaths(i).state == "ALIVE" and self.workers.answers(i):
                    return True
                now = time.monotonic()
                if self.workers.placed(i):
                    unplaced_since = None
                elif unplaced_since is None:
                    unplaced_since = now
                if now > deadline or (unplaced_since is not None and now - unplaced_since >= UNPLACED_GRACE_S):
                    self._leave(i)
                    return False
                time.sleep(POLL_S)
        finally:
            self.recovering -= 1

    def _leave(self, i: int) -> None:
        """Worker i leaves the job; Ray keeps its actor pending in its bundle until a node has room for it."""
        self.live.remove(i)
        self.counters.workers_changed(self.round + 1, len(self.live), self.n_workers)

    def _rejoin(self, t: int) -> None:
        """Missing workers whose actors are back join the job from round t (at most every REJOIN_POLL_S)."""
        if len(self.live) == self.n_workers or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + REJOIN_POLL_S
        back = []
        for i in range(self.n_workers):
            if i in self.live:
                continue
            rec = self.workers.record(i)
            if rec.state == "DEAD":  # it will not be restarted: a new actor waits for its bundle instead
                self.workers.replace_actor(i)
                self.restarts[i] = 0
                self.counters.worker_failures += 1
            elif rec.state == "ALIVE" and self.workers.answers(i):
                self.counters.worker_failures += rec.restarts - self.restarts[i]  # its deaths while out
                self.restarts[i] = rec.restarts
                back.append(i)
        if back:
            self.live[:] = sorted(self.live + back)
            self.counters.workers_changed(t + 1, len(self.live), self.n_workers)
