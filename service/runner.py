"""The service's Ray side: starts queued jobs, polls running ones, persists what they report.

One `Runner` per service process. `tick()` (every HES_POLL_SECONDS, from a background task) polls each
running job's coordinator actor for its status and round events, updates the store and the metrics,
persists terminal results, then starts queued jobs while the concurrency limit and the cluster's CPUs
allow. On startup `reattach()` finds the coordinators of jobs that were running (named detached actors)
or marks those jobs FAILED, saying their coordinator is gone. Ray calls are made without the runner's
lock, so a stop or delete request never waits behind a coordinator that is slow to answer.
"""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from coordinator.actor import JobHandle, JobStartError, cluster_resources, find_job, start_job
from coordinator.config import ConfigError, JobConfig, validate_config
from coordinator.documents import JobResult, JobStatus, Poll, Snapshot, WorkerCounts, plain, restarts_note
from service.history import read_records
from service.metrics import Metrics
from service.settings import Settings
from service.store import JobRecord, Store, now
from service.validation import needs

log = logging.getLogger("hes.service")
RAY_TIMEOUT_S = 30.0
_STARTING = ("starting", "restarting")  # messages of a job whose coordinator has not reported RUNNING yet


class Runner:
    """Starts, follows, stops and forgets jobs. `lock` guards the store decisions and the handle tables;
    no Ray call is made while it is held, so stop and delete never wait behind a slow coordinator."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics
        self.handles: dict[str, JobHandle] = {}
        self.starting: set[str] = set()  # chosen to start; their coordinators are being created
        self.workers: dict[str, WorkerCounts] = {}
        self.lock = threading.RLock()

    def cluster(self) -> dict[str, float]:
        return cluster_resources()

    def reattach(self) -> None:
        """After a (re)start: reattach to coordinators of jobs that were started, or fail those jobs."""
        for rec in self.store.all():
            self.metrics.update(rec.id, rec.progress)
            if rec.terminal or rec.started_at is None:
                continue
            handle = find_job(rec.id)
            if handle is None:
                self._restart_or_fail(rec, "its coordinator is gone (the service restarted and its Ray cluster "
                                           "did not keep the job)")
                continue
            log.info("reattached to job %s", rec.id)
            self.handles[rec.id] = handle
            if rec.stop_requested:  # asked before the restart: the request may not have reached the coordinator
                handle.request_stop()
        self.metrics.set_jobs(self.store.counts())

    def tick(self) -> None:
        """Poll every running job, then start queued jobs that fit (one thread at a time: the poller)."""
        with self.lock:
            running = dict(self.handles)
        for job_id, handle in running.items():
            poll = handle.poll(RAY_TIMEOUT_S)
            with self.lock:
                gone = self._apply(job_id, handle, poll)
            if gone is not None:
                _kill(job_id, gone)
        self._start_queued()
        with self.lock:
            alive = sum(w.alive for w in self.workers.values())
            restarting = sum(w.restarting for w in self.workers.values())
            counts = self.store.counts()
        self.metrics.set_workers(alive, restarting)
        self.metrics.set_jobs(counts)

    def _apply(self, job_id: str, handle: JobHandle, poll: Poll) -> JobHandle | None:
        """Record one poll (under the lock); the handle to kill when the job is over."""
        if self.handles.get(job_id) is not handle:
            return None  # forgotten while it was polled
        rec = self.store.get(job_id)
        if rec is None:
            return self._detach(job_id)
        if poll.timed_out:
            log.warning("job %s: its coordinator did not answer within %.0f s", job_id, RAY_TIMEOUT_S)
            return None
        if poll.died is not None or poll.snapshot is None:
            self._restart_or_fail(rec, f"its coordinator died ({poll.died})")
            return self._detach(job_id)
        snap, result = poll.snapshot, poll.result
        self.metrics.update(job_id, snap, poll.events)
        self.workers[job_id] = snap.workers
        progress = _merge(rec.progress, snap)
        fields: dict[str, Any] = {"progress": progress}
        if progress.progress.epoch > len(rec.history) or result is not None:
            fields["history"] = read_records(Path(rec.out_dir))
        gone = None
        if result is not None:
            fields.update(status=result.status, message=plain(result.message), result=result, finished_at=now())
            self.metrics.finish(job_id)
            gone = self._detach(job_id)
        elif snap.status == JobStatus.RUNNING and (rec.status != JobStatus.RUNNING
                                                   or rec.message.startswith(_STARTING)):
            fields.update(status=JobStatus.RUNNING, message=restarts_note(rec.restarts))
        self.store.update(job_id, **fields)
        return gone

    def _start_queued(self) -> None:
        """Start PENDING jobs in submission order (first in, first out) while they fit."""
        with self.lock:
            if not any(r.started_at is None and r.id not in self.starting for r in self.store.unfinished()):
                return
        total = self.cluster()
        while True:
            with self.lock:
                chosen = self._next_to_start(total)
            if chosen is None:
                return
            rec, cfg = chosen
            resume = (Path(rec.out_dir) / "checkpoint.npz").is_file()  # a restarted job continues from it
            try:
                # find_job first: a service that died between starting a job and recording it left its actor
                handle = find_job(rec.id) or start_job(cfg, rec.out_dir, resume=resume, job_id=rec.id,
                                                       detached=True, restarts=rec.restarts)
            except JobStartError as err:
                with self.lock:
                    self.starting.discard(rec.id)
                    self._fail(rec, f"the job's coordinator could not be started: {err}")
                continue
            with self.lock:
                self.starting.discard(rec.id)
                current = self.store.get(rec.id)
                keep = current is not None and not current.terminal  # not stopped or deleted meanwhile
                if current is not None and keep:
                    self.handles[rec.id] = handle
                    placing = f"loading data and placing {cfg.cluster.workers} workers"
                    restarting = current.message.startswith("restarting")  # keep why it restarts
                    self.store.update(rec.id, started_at=now(), message=f"{current.message}; {placing}"
                                      if restarting else f"starting: {placing}")
            if keep:
                log.info("started job %s", rec.id)
            else:
                _kill(rec.id, handle)

    def _next_to_start(self, total: dict[str, float]) -> tuple[JobRecord, JobConfig] | None:
        """The first queued job if it fits now (marked as starting), else None; says why the others wait."""
        for rec in self.store.unfinished():
            if rec.started_at is not None or rec.id in self.starting:
                continue
            running = len(self.handles) + len(self.starting)
            if running >= self.settings.max_concurrent_jobs:
                self._wait(rec, f"queued: {running} jobs run, the limit is {self.settings.max_concurrent_jobs} "
                                "(HES_MAX_CONCURRENT_JOBS)")
                return None
            try:
                cfg = validate_config(rec.config)
            except ConfigError as err:  # stored by an older version whose config this one no longer takes
                self._fail(rec, f"its stored config is not valid for this version of the service: {err}")
                continue
            need = needs(cfg)
            free = self._free(total)
            short = [k for k in ("CPU", "GPU") if need[k] > free[k]]
            if short:
                self._wait(rec, f"queued: needs {need['CPU']:g} CPUs and {need['GPU']:g} GPUs; "
                                f"{free['CPU']:g} CPUs and {free['GPU']:g} GPUs of the Ray cluster are free")
                return None
            self.starting.add(rec.id)
            return rec, cfg
        return None

    def _free(self, total: dict[str, float]) -> dict[str, float]:
        """The cluster's resources minus what the jobs this service runs or is starting hold."""
        held = {"CPU": 0.0, "GPU": 0.0}
        for job_id in [*self.handles, *self.starting]:
            rec = self.store.get(job_id)
            if rec is not None:
                for k, v in needs(validate_config(rec.config)).items():
                    held[k] += v
        return {k: total.get(k, 0.0) - held[k] for k in held}

    def _wait(self, rec: JobRecord, message: str) -> None:
        if rec.message != message:
            self.store.update(rec.id, message=message)

    def _fail(self, rec: JobRecord, message: str) -> None:
        self._end(rec, JobStatus.FAILED, message)

    def _end(self, rec: JobRecord, status: JobStatus, message: str) -> None:
        """End a job the service ends itself (no coordinator to report a result), with what it had done."""
        self.metrics.finish(rec.id)
        self.store.update(rec.id, status=status, message=message, finished_at=now(),
                          history=read_records(Path(rec.out_dir)), result=_ended(rec, status, message))

    def _restart_or_fail(self, rec: JobRecord, why: str) -> None:
        """A running job lost its coordinator: queue it again (it resumes from its latest checkpoint, or starts
        over when it has none) while it has restarts left, else fail it."""
        limit = self.settings.job_max_restarts
        if rec.stop_requested:  # it was on its way to STOPPED: a restart would run it on
            self._end(rec, JobStatus.STOPPED, f"stopped: {why} after the stop was requested; its last "
                                              "checkpoint is kept")
            return
        if rec.restarts >= limit:
            self._fail(rec, f"{why}; it was restarted {rec.restarts} times already (HES_JOB_MAX_RESTARTS={limit})"
                            + _resume_hint(Path(rec.out_dir)))
            return
        n = rec.restarts + 1
        log.warning("job %s: %s; restart %d of %d", rec.id, why, n, limit)
        self.store.update(rec.id, status=JobStatus.RUNNING, started_at=None, restarts=n,
                          message=f"restarting from its checkpoint (restart {n} of {limit}): {why}")

    def _detach(self, job_id: str) -> JobHandle | None:
        """Stop following a job (under the lock); its (detached) coordinator is then killed by the caller."""
        self.workers.pop(job_id, None)
        return self.handles.pop(job_id, None)

    def stop(self, job_id: str) -> JobRecord | None:
        """Ask a job to stop (one that has not started is STOPPED at once); None when it is already over."""
        with self.lock:
            rec = self.store.get(job_id)
            if rec is None or rec.terminal:
                return None
            handle = self.handles.get(job_id)
            if handle is None:  # queued, or its coordinator is being created: that one is killed once it exists
                message = ("stopped while it was being restarted; its last checkpoint is kept" if rec.restarts
                           else "stopped before it started")
                self._end(rec, JobStatus.STOPPED, message)
                return self.store.get(job_id)
            self.store.update(job_id, stop_requested=True,
                              message="stop requested: the job ends STOPPED after its current round, keeping its "
                                      "checkpoint")
            answer = self.store.get(job_id)
        if not handle.request_stop():  # a dead coordinator: the next poll restarts or fails the job
            log.warning("job %s: its coordinator did not take the stop request", job_id)
        return answer

    def forget(self, job_id: str) -> bool:
        """Delete a terminal job: its record, its series, its outputs. False when it is not terminal."""
        with self.lock:
            rec = self.store.get(job_id)
            if rec is None or not rec.terminal:
                return False
            handle = self._detach(job_id)
            self.store.delete(job_id)
            counts = self.store.counts()
        if handle is not None:
            _kill(job_id, handle)
        self.metrics.remove(job_id)
        self.metrics.set_jobs(counts)
        shutil.rmtree(rec.out_dir, ignore_errors=True)
        return True


def _kill(job_id: str, handle: JobHandle) -> None:
    """Kill a coordinator actor that outlives its run (detached); quiet when it is already gone."""
    log.info("job %s: its coordinator is released", job_id)
    handle.kill()


def _ended(rec: JobRecord, status: JobStatus, message: str) -> JobResult:
    """The result of a job the service ended itself (its coordinator gone, or never started): what it had done."""
    p = rec.progress
    return JobResult(status=status, message=message, config=rec.config, rounds=p.rounds, bytes=p.bytes,
                     seconds=p.seconds, replica_checks=p.replica_checks, improvements=p.improvements,
                     worker_failures=p.worker_failures, restarts=rec.restarts)


def _merge(stored: Snapshot, snap: Snapshot) -> Snapshot:
    """The coordinator's snapshot; before its job is built it knows no total yet, so keep the stored one."""
    return snap if snap.progress.total_rounds else snap.model_copy(update={"progress": stored.progress})




def _resume_hint(out_dir: Path) -> str:
    if (out_dir / "checkpoint.npz").is_file():
        return f"; its last checkpoint is in {out_dir} (`hes train --resume {out_dir}` continues it)"
    return ""
