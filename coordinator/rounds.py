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
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from coordinator.accounting import Counters, RoundBytes
from coordinator.combine import Rules, combine, round_loss, weighted_mean
from workers.hybrid import apply_decision
from workers.messages import Result, RoundKind, Sync, Task
from workers.replica import Schedule, digest
from workers.state import Decision, DecisionKind, Diverged, HybridState, Hyper, require_finite
from workers.steps import keep_frozen


class Pool(Protocol):
    n_workers: int
    overlaps: bool  # send() returns while the workers compute (Ray); False in this process

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

    def close(self) -> None: ...


@dataclass(frozen=True)
class RoundEvent:
    round: int
    kind: str  # full | stochastic
    seconds: float
    bytes: RoundBytes
    improvements: int
    loss: float  # the round's batch loss: mean over examples (full, localsgd) or best trial cost


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
                           search.job_seed if search else 0)
        # full rounds so far, capped at guided_m: the gradients guided trials are drawn around (a quadratic
        # fit needs their number; counted here so that the combine does not wait for the state)
        self.subspace = min(search.history_m if search else 0,
                            sum(schedule.kind(i) == RoundKind.FULL for i in range(state.version)))
        self.pending = Decision(state.version - 1, DecisionKind.NONE)  # the workers have not received it yet
        self._unapplied: list[Decision] = []  # the coordinator's own state has not applied them yet, in order

    @property
    def state(self) -> HybridState:
        """The coordinator's state with every decision applied (the round loop's thread only)."""
        self._settle()
        return self._state

    def _settle(self) -> None:
        while self._unapplied:  # one at a time: if an apply fails, the state and the list still agree
            self._state = apply_decision(self._state, self._unapplied[0], self.hyper)
            self._unapplied.pop(0)

    def _settle_under(self, t: int, task: Task) -> bool:
        """Apply the waiting decisions while the workers do round t? Not in a full round followed by a
        stochastic one, unless round t checks the replicas (the comparison needs the state at once)."""
        if task.kind != RoundKind.FULL or task.want_digest:
            return True
        return self.schedule.kind(t + 1) != RoundKind.STOCHASTIC

    def snapshot(self) -> Sync:
        st = self.state
        g = None if st.grad is None else st.grad.cpu().numpy()
        return Sync(st.version, st.theta.cpu().numpy(), g, history=tuple(h.cpu().numpy() for h in st.history))

    def run_round(self, t: int) -> RoundEvent:
        started = time.perf_counter()
        kind = self.schedule.kind(t)
        want_digest = bool(self.check_every) and t > 0 and t % self.check_every == 0
        expected = self._unapplied[-1].round + 1 if self._unapplied else self._state.version
        assert t == expected, f"round {t} on a state at version {expected}"
        task = Task(t, kind, self.pending, want_digest)
        sent = self.pool.send(task)
        if self._settle_under(t, task):
            self._settle()  # while the workers work, when they work elsewhere
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
            self._settle()  # nothing to overlap with: apply now, so the round's time holds its own update
        seconds = time.perf_counter() - started
        improvements = sum(r.improvements for r in results)
        self.counters.add_round(kind.label, rb, seconds, improvements)
        return RoundEvent(t, kind.label, seconds, rb, improvements, loss)

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
        task = Task(self.state.version, RoundKind.APPLY, self.pending, self.mode != "localsgd", gather)
        results, rb = self.pool.round(task, self.snapshot)
        if task.want_digest:
            self._check_replicas(task, self._drop_stale(task.round, results), rb)
        if gather:
            fresh = self._drop_stale(task.round, results)
            if fresh:  # a worker that restarted meanwhile was resynced: it brings the last average
                st = self.state
                theta = torch.from_numpy(weighted_mean(fresh, by_examples=True)).to(st.theta.device)
                self._state = HybridState(st.version, keep_frozen(theta, st.theta, self.hyper), st.grad, st.history)
        self.counters.add_bytes(rb)
        self.pending = Decision(self.state.version - 1, DecisionKind.NONE)

    def _drop_stale(self, t: int, results: list[Result]) -> list[Result]:
        fresh = [r for r in results if r.round == t]
        self.counters.stale_results_dropped += len(results) - len(fresh)
        return fresh

    def _check_replicas(self, task: Task, results: list[Result], rb: RoundBytes) -> list[Result]:
        """Compare each worker's digest (taken after applying the previous decision) with ours."""
        ours = digest(self.state.theta)
        out = []
        for r in results:
            self.counters.replica_checked += 1
            if r.digest == ours:
                out.append(r)
                continue
            self.counters.replica_mismatches += 1
            self.pool.resync(r.worker, self.snapshot(), rb)
            if task.kind == RoundKind.APPLY:
                continue
            redo = Task(task.round, task.kind, Decision(task.round - 1, DecisionKind.NONE), False)
            out.append(self.pool.rerun(r.worker, redo, rb))
        return out

    def combine(self, t: int, kind: RoundKind, results: list[Result]) -> Decision:
        """The round's decision: coordinator/combine.py, a pure function of the kind, results and rules."""
        return combine(t, kind, results, self.rules, self.subspace)
