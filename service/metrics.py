"""Prometheus metrics of the service: exactly the names, types and labels of DESIGN.md, on a registry of its own.

Per-job counters follow the coordinator's cumulative counters (each poll adds what grew since the last);
the two histograms observe every round the coordinator reports (its drained round events), bytes as
hes_sent_bytes_total charges them: a stochastic round a few dozen bytes, whatever the model size.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from coordinator.documents import JobStatus, RoundReport, Snapshot

ROUND_KINDS = ("full", "stochastic")
BYTE_KINDS = ("full", "stochastic", "sync")
DIRECTIONS = ("up", "down")
RING_DIRECTIONS = ("sent", "received")  # cluster.full_rounds allreduce: among the workers, all of them summed
WORKER_STATES = ("alive", "restarting")
# A stochastic round moves ~36 B per worker, a full round 4 B per parameter per worker and direction:
# MLP 784-300-10 on 2 workers = 238,510 * 4 B * 2 * 2 = 3,816,160 B. Powers of 4 from 16 B to 4 GiB cover both.
BYTE_BUCKETS = tuple(float(4**i) for i in range(2, 17))
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no `*_created` series: the contract's names and nothing else
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("hes_rounds_total", "Rounds completed, by job and kind", ["job", "kind"], registry=r)
        self.sent_bytes = Counter("hes_sent_bytes_total", "Payload bytes between coordinator and workers",
                                  ["job", "kind", "direction"], registry=r)
        self.ring_bytes = Counter("hes_ring_bytes_total", "Bytes the workers' allreduce (cluster.full_rounds "
                                  "allreduce) sent and received among themselves, every worker's summed, by round "
                                  "kind", ["job", "kind", "direction"], registry=r)
        self.round_bytes = Histogram("hes_round_sent_bytes", "Payload bytes charged to one round's kind (all "
                                     "workers, both directions)", ["kind"], buckets=BYTE_BUCKETS, registry=r)
        self.round_seconds = Histogram("hes_round_duration_seconds", "Wall time of one round", ["kind"],
                                       buckets=SECOND_BUCKETS, registry=r)
        self.progress = Gauge("hes_job_progress_ratio", "Rounds done / total rounds", ["job"], registry=r)
        self.train_loss = Gauge("hes_train_loss", "Training-set loss at the last epoch end", ["job"], registry=r)
        self.dev_accuracy = Gauge("hes_dev_accuracy", "Dev-set accuracy at the last epoch end (fraction)",
                                  ["job"], registry=r)
        self.eval_return = Gauge("hes_eval_return", "A black-box job's mean evaluation return at the last epoch end",
                                 ["job"], registry=r)
        self.episodes_rate = Gauge("hes_worker_episodes_per_second", "A black-box job's trial episodes per second "
                                   "per worker in its last round (0 for a job on a data set)", ["job"], registry=r)
        self.improvements = Counter("hes_stochastic_improvements_total", "Trials that beat the unperturbed "
                                    "gradient (paper Fig. 14)", ["job"], registry=r)
        self.workers = Gauge("hes_workers", "Worker actors of running jobs, by state", ["state"], registry=r)
        self.worker_failures = Counter("hes_worker_failures_total", "Worker actor failures seen by "
                                       "coordinators", registry=r)
        self.jobs = Gauge("hes_jobs", "Jobs in the store, by status", ["status"], registry=r)
        for state in WORKER_STATES:
            self.workers.labels(state=state).set(0)
        for status in JobStatus:
            self.jobs.labels(status=status).set(0)
        for kind in ROUND_KINDS:
            self.round_bytes.labels(kind=kind)
            self.round_seconds.labels(kind=kind)
        self._seen: dict[str, dict[str, float]] = {}
        self._pending: dict[str, tuple[str, int]] = {}  # job -> its last round, observed with the next
        self._lock = threading.Lock()

    def track(self, job_id: str) -> None:
        """Create a job's series at zero, so they exist from the moment it is submitted."""
        with self._lock:
            if job_id in self._seen:
                return
            self._seen[job_id] = {}
            for kind in ROUND_KINDS:
                self.rounds.labels(job=job_id, kind=kind)
            for kind in BYTE_KINDS:
                for direction in DIRECTIONS:
                    self.sent_bytes.labels(job=job_id, kind=kind, direction=direction)
            for direction in RING_DIRECTIONS:
                self.ring_bytes.labels(job=job_id, kind="full", direction=direction)
            self.improvements.labels(job=job_id)
            self.progress.labels(job=job_id).set(0)
            self.episodes_rate.labels(job=job_id).set(0)

    def update(self, job_id: str, snapshot: Snapshot, events: Sequence[RoundReport] = ()) -> None:
        """Bring a job's series up to a coordinator status snapshot and observe its round events."""
        self.track(job_id)
        with self._lock:
            seen = self._seen[job_id]
            for kind, n in snapshot.rounds.model_dump().items():
                self._grow(seen, f"rounds.{kind}", n, self.rounds.labels(job=job_id, kind=kind))
            for direction, by_kind in (("up", snapshot.sent.up), ("down", snapshot.sent.down)):
                for kind, n in by_kind.items():
                    self._grow(seen, f"bytes.{kind}.{direction}", n,
                               self.sent_bytes.labels(job=job_id, kind=kind, direction=direction))
            ring = snapshot.bytes.ring.full
            for direction, n in (("sent", ring.sent), ("received", ring.received)):
                self._grow(seen, f"ring.full.{direction}", n,
                           self.ring_bytes.labels(job=job_id, kind="full", direction=direction))
            self._grow(seen, "improvements", snapshot.improvements, self.improvements.labels(job=job_id))
            self._grow(seen, "worker_failures", snapshot.worker_failures, self.worker_failures)
            self.progress.labels(job=job_id).set(snapshot.progress.fraction)
            train_loss, dev_accuracy = snapshot.metrics.get("train_loss"), snapshot.metrics.get("dev_accuracy")
            if train_loss is not None:
                self.train_loss.labels(job=job_id).set(train_loss)
            if dev_accuracy is not None:
                self.dev_accuracy.labels(job=job_id).set(dev_accuracy)
            if (ret := snapshot.metrics.get("return")) is not None:
                self.eval_return.labels(job=job_id).set(ret)
            for e in events:
                self._observe_round(job_id, e)
                if e.episodes and e.seconds > 0:
                    workers = max(1, snapshot.workers.alive)
                    self.episodes_rate.labels(job=job_id).set(e.episodes / e.seconds / workers)

    def _observe_round(self, job_id: str, e: RoundReport) -> None:
        """A round's decision rides down with the next round's task, so a round is observed when the next
        one arrives: its own kind's bytes plus, when the kinds differ, the next task's bytes of its kind
        (its decision). Two rounds of one kind in a row share one sum, so per kind the histogram's sum
        equals what hes_sent_bytes_total charges to rounds. Stochastic round, 2 workers: (21 up + 6 header
        + 9 seed) B * 2 = 72 B."""
        kind = e.kind
        if kind not in ROUND_KINDS:
            return
        pending = self._pending.pop(job_id, None)
        if pending is not None:
            prev_kind, amount = pending
            if prev_kind != kind:
                amount += e.down.get(prev_kind, 0)
            self.round_bytes.labels(kind=prev_kind).observe(amount)
        self._pending[job_id] = (kind, e.up.get(kind, 0) + e.down.get(kind, 0))
        self.round_seconds.labels(kind=kind).observe(e.seconds)

    def finish(self, job_id: str) -> None:
        """The job ended: observe its last round (its decision was applied by the final flush)."""
        with self._lock:
            pending = self._pending.pop(job_id, None)
        if pending is not None:
            self.round_bytes.labels(kind=pending[0]).observe(pending[1])

    @staticmethod
    def _grow(seen: dict[str, float], key: str, total: float, counter: Any) -> None:
        delta = total - seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            seen[key] = total

    def set_workers(self, alive: int, restarting: int) -> None:
        self.workers.labels(state="alive").set(alive)
        self.workers.labels(state="restarting").set(restarting)

    def set_jobs(self, counts: dict[str, int]) -> None:
        for status, n in counts.items():
            self.jobs.labels(status=status).set(n)

    def remove(self, job_id: str) -> None:
        """Drop every series of a deleted job."""
        with self._lock:
            self._seen.pop(job_id, None)
            self._pending.pop(job_id, None)
            for kind in ROUND_KINDS:
                _discard(self.rounds, job_id, kind)
            for kind in BYTE_KINDS:
                for direction in DIRECTIONS:
                    _discard(self.sent_bytes, job_id, kind, direction)
            for direction in RING_DIRECTIONS:
                _discard(self.ring_bytes, job_id, "full", direction)
            for metric in (self.improvements, self.progress, self.train_loss, self.dev_accuracy, self.eval_return,
                           self.episodes_rate):
                _discard(metric, job_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _discard(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
