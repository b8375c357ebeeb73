"""The round loop and nothing else: schedule a round, send its task, combine the results, apply.

The coordinator is the single source of truth: it applies every decision to its own state and ships it to
the workers inside the next round's task (see workers/messages.py). A `Pool` moves the messages, in this
process (`coordinator.pool.LocalPool`) or to Ray actors (`coordinator.ray_pool`). When the pool's workers
compute elsewhere (`pool.overlaps`), the coordinator sends round t's task first and applies round t-1's
decision to its own state while the workers work, so its own update is off the round's critical path;
`RoundLoop.state` is always the state with every decision applied.

Which round the coordinator's update overlaps matters on a small node: a full round is short (one
gradient), and applying a chosen seed means drawing P normal numbers again, which would then compete for the
cores with the task's delivery and the worker's gradient. So when a full round is followed by a stochastic
one (K trials, several times longer), the decisions wait and are applied under the stochastic round instead
(BENCHMARKS.md, section 5, has the round times).

With cluster.full_rounds allreduce (`pool.reduces`) the workers sum a full round's gradients among themselves and
the decision only names it (`Decision.reduced`): the coordinator cannot apply it. Its state then lags: it applies
what it can (seeds after a known gradient) and, when it needs the state (a resync, an evaluation, a checkpoint,
the end), reads it from a live replica (`pool.pull`, counted as sync): the state at the version the replicas hold
and the array of the decision they have not applied yet. The replica check compares the workers' digests with
each other (the most common one is right) instead of with the coordinator's.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from coordinator.accounting import Counters, RoundBytes
from coordinator.combine import Rules, combine, round_loss, weighted_mean
from workers.hybrid import apply_decision
from workers.messages import Result, RoundKind, Sync, Task
from workers.replica import Schedule, digest, state_sync, synced_state
from workers.state import Decision, DecisionKind, Diverged, HybridState, Hyper, require_finite
from workers.steps import keep_frozen


class ReplicasLost(RuntimeError):
    """allreduce: no live replica holds the state the coordinator needs (every one was lost at once); the job
    rewinds to its last checkpoint (coordinator/job.py)."""


class Pool(Protocol):
    """How a round's messages reach the workers: coordinator/pool.py (in this process), coordinator/ray_pool.py."""
    n_workers: int
    overlaps: bool  # send() returns while the workers compute (Ray); False in this process
    reduces: bool  # cluster.full_rounds allreduce: full rounds are summed among the workers (pull reads the state)

    @property
    def alive(self) -> int:
        """Workers in the job and answering."""
        ...

    @property
    def restarting(self) -> int:
        """Workers recovering from a death or waiting for a node (n_workers - alive)."""
        ...

    def send(self, task: Task) -> Any:
        """Start `task` on every worker; what it returns goes to `collect`."""
        ...

    def collect(self, sent: Any, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        """Every worker's result for `task`, ordered by worker; resyncs workers that need it."""
        ...

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        """send, then collect."""
        ...

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None: ...

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result: ...

    def pull(self, version: int, rb: RoundBytes, source: int | None = None) -> Sync:
        """A live replica's state at `version` (the worker `source` when given), its bytes counted as sync up;
        ReplicasLost when none holds it."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RoundEvent:
    round: int
    kind: str  # full | stochastic
    seconds: float
    bytes: RoundBytes
    improvements: int
    loss: float  # the round's batch loss: mean over examples (full, localsgd) or best trial cost
    episodes: int = 0  # a black-box job's trial episodes in the round (its results' `examples`)


class RoundLoop:
    def __init__(self, state: HybridState, hyper: Hyper, schedule: Schedule, mode: str, combine: str,
                 pool: Pool, counters: Counters, check_every: int = 10) -> None:
        self._state, self.hyper, self.schedule = state, hyper, schedule
        self.mode, self.combine_rule, self.pool, self.counters = mode, combine, pool, counters
        self.check_every = 0 if mode == "localsgd" else check_every
        search = hyper.search
        self.rules = Rules(mode, combine, search.trials if search else "independent",
                           search.k if search else 0, pool.n_workers, schedule.assisted,
                           search.es_lr if search else 1.0, search.es_weights if search else "rank",
                           search.job_seed if search else 0, pool.reduces)
        # full rounds so far, capped at guided_m: the gradients guided trials are drawn around (a quadratic
        # fit needs their number; counted here so that the combine does not wait for the state)
        self.subspace = min(search.history_m if search else 0,
                            sum(schedule.kind(i) == RoundKind.FULL for i in range(state.version)))
        self.pending = Decision(state.version - 1, DecisionKind.NONE)  # the workers have not received it yet
        self._unapplied: list[Decision] = []  # the coordinator's own state has not applied them yet, in order
        self._workers_at = state.version  # the version the replicas hold (they have applied every decision sent)

    @property
    def state(self) -> HybridState:
        """The coordinator's state with every decision applied (the round loop's thread only)."""
        self._settle()
        return self._state

    def _settle(self, pull: bool = True) -> None:
        """Apply the waiting decisions; a reduced one (allreduce) needs the replicas' state: read it when `pull`,
        else stop there (the overlap must not wait for a worker)."""
        while self._unapplied:  # one at a time: if an apply fails, the state and the list still agree
            if self._unapplied[0].reduced:
                if pull:
                    self._pull()
                return
            self._state = apply_decision(self._state, self._unapplied[0], self.hyper)
            self._unapplied.pop(0)

    def _pull(self, source: int | None = None) -> None:
        """allreduce: the state from a live replica (`source` when given), then the decision the replicas have not
        applied yet with the array they reduced for it."""
        rb = RoundBytes()
        s = self.pool.pull(self._workers_at, rb, source)
        self.counters.add_bytes(rb)
        self._state = synced_state(s, self._state.theta.device)
        rest = [d for d in self._unapplied if d.round >= s.version]
        for d in rest:
            if d.reduced:
                if s.reduced is None or d.round != s.version:
                    raise ReplicasLost(f"round {d.round + 1}: no replica holds the array the workers reduced")
                d = replace(d, array=s.reduced, reduced=False)
            self._state = apply_decision(self._state, d, self.hyper)
        self._unapplied.clear()

    def _settle_under(self, t: int, task: Task) -> bool:
        """Apply the waiting decisions while the workers do round t? Not in a full round followed by a
        stochastic one, unless round t checks the replicas (the comparison needs the state at once)."""
        if task.kind != RoundKind.FULL or task.want_digest:
            return True
        return self.schedule.kind(t + 1) != RoundKind.STOCHASTIC

    def snapshot(self) -> Sync:
        return state_sync(self.state)

    def run_round(self, t: int) -> RoundEvent:
        started = time.perf_counter()
        kind = self.schedule.kind(t)
        want_digest = bool(self.check_every) and t > 0 and t % self.check_every == 0
        expected = self._unapplied[-1].round + 1 if self._unapplied else self._state.version
        assert t == expected, f"round {t} on a state at version {expected}"
        task = Task(t, kind, self.pending, want_digest)
        sent = self.pool.send(task)
        self._workers_at = t
        if self._settle_under(t, task):
            self._settle(pull=False)  # while the workers work, when they work elsewhere
        results, rb = self.pool.collect(sent, task, self.snapshot)
        results = self._drop_stale(t, results)
        if want_digest:
            results = self._check_replicas(task, results, rb)
        loss = self._round_loss(t, kind, results)
        decision = self.combine(t, kind, results)
        if kind == RoundKind.FULL and self.hyper.search is not None:
            self.subspace = min(self.hyper.search.history_m, self.subspace + 1)
        if kind == RoundKind.FULL and decision.array is not None and not np.isfinite(decision.array).all():
            raise Diverged(t + 1, "the batch gradient has nan or inf entries")
        self.pending = decision
        self._unapplied.append(decision)
        if not self.pool.overlaps:
            self._settle(pull=False)  # nothing to overlap with: apply now, so the round's time holds its update
        seconds = time.perf_counter() - started
        improvements = sum(r.improvements for r in results)
        self.counters.add_round(kind.label, rb, seconds, improvements)
        episodes = sum(r.examples for r in results) if self.hyper.objective is not None else 0
        self.counters.episodes += episodes
        return RoundEvent(t, kind.label, seconds, rb, improvements, loss, episodes)

    def _round_loss(self, t: int, kind: RoundKind, results: list[Result]) -> float:
        """The round's batch loss; Diverged when it is nan or inf.

        Stochastic rounds: the best trial's cost, which is non-finite only when every trial of every worker
        was (workers rank non-finite costs last), so no step of the round is finite to take."""
        loss = round_loss(kind, results, self.rules)
        if kind == RoundKind.STOCHASTIC:
            if self.mode != "stale" and results:  # the stale control runs no trials: nan
                require_finite(loss, t + 1, "the cost of every trial")
            return loss
        require_finite(loss, t + 1, "the batch loss")
        return loss

    def flush(self) -> None:
        """Send the last decision so every replica ends at the coordinator's version; a last replica check.

        localsgd: when the job ends between averages (its rounds are not a multiple of r, or it was stopped),
        the workers' parameters hold local steps the coordinator has not seen: gather and average them once
        more (counted as sync), so the saved model holds every step taken."""
        if self.pending.kind == DecisionKind.NONE:
            return
        gather = self.pending.kind == DecisionKind.LOCAL
        task = Task(self.pending.round + 1, RoundKind.APPLY, self.pending, self.mode != "localsgd", gather)
        self._workers_at = task.round
        results, rb = self.pool.round(task, self.snapshot)
        if task.want_digest:
            self._check_replicas(task, self._drop_stale(task.round, results), rb)
        if gather:
            fresh = self._drop_stale(task.round, results)
            if fresh:  # a worker that restarted meanwhile was resynced: it brings the last average
                st = self.state
                theta = torch.from_numpy(weighted_mean(fresh, by_examples=True)).to(st.theta.device)
                self._state = HybridState(st.version, keep_frozen(theta, st.theta, self.hyper), st.grad, st.history,
                                          st.obs)
        self.counters.add_bytes(rb)
        self.pending = Decision(task.round - 1, DecisionKind.NONE)

    def _drop_stale(self, t: int, results: list[Result]) -> list[Result]:
        fresh = [r for r in results if r.round == t]
        self.counters.stale_results_dropped += len(results) - len(fresh)
        return fresh

    def _check_replicas(self, task: Task, results: list[Result], rb: RoundBytes) -> list[Result]:
        """Compare each worker's digest (taken after applying the previous decision) with ours; under allreduce,
        with the most common one (ties: the lowest worker's), whose replica a resync then reads."""
        source = None
        if self.pool.reduces and results:
            counts = Counter(r.digest for r in results)
            right = max(results, key=lambda r: (counts[r.digest], -r.worker))
            ours, source = right.digest, right.worker
        else:
            ours = digest(self.state.theta)
        out = []
        for r in results:
            self.counters.replica_checked += 1
            if r.digest == ours:
                out.append(r)
                continue
            self.counters.replica_mismatches += 1
            if source is not None and self._unapplied:
                self._pull(source)
            self.pool.resync(r.worker, self.snapshot(), rb)
            if task.kind == RoundKind.APPLY:
                continue
            redo = Task(task.round, task.kind, Decision(task.round - 1, DecisionKind.NONE), False)
            out.append(self.pool.rerun(r.worker, redo, rb))
        return out

    def combine(self, t: int, kind: RoundKind, results: list[Result]) -> Decision:
        """The round's decision: coordinator/combine.py, a pure function of the kind, results and rules."""
        return combine(t, kind, results, self.rules, self.subspace)
