"""`hes train`: run one job to the end with a progress bar; in this process or on Ray.

cluster.workers == 0 (or cluster.backend: local) runs the Job here; >= 1 starts (or joins) Ray, creates the
coordinator actor and its worker actors, and follows the actor's progress.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from coordinator.config import JobConfig
from coordinator.display import postfix
from coordinator.documents import JobResult
from coordinator.job import Job, Progress
from coordinator.rounds import RoundEvent


def _bar(total: int, initial: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, unit="round", disable=not enabled or not sys.stderr.isatty(),
                dynamic_ncols=True)


def add_local_paths(env: dict[str, Any] | None) -> None:
    """In process (cluster.workers 0): make the local py_modules and working_dir importable here, as Ray makes
    them on its nodes (a py_modules entry is the package's own folder, so its parent goes on the path)."""
    env = env or {}
    entries = [(str(m), True) for m in env.get("py_modules", [])]
    if env.get("working_dir"):
        entries.append((str(env["working_dir"]), False))
    for path, is_package in entries:
        p = Path(path)
        if "://" in path or not p.exists():
            continue
        entry = str(p.resolve().parent if is_package else p.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)


def train(cfg: JobConfig, out: Path, resume: bool = False, progress: bool = True) -> JobResult:
    """Run the job to its end; Ctrl-C stops it cleanly (status STOPPED, checkpoint kept)."""
    if cfg.cluster.workers >= 1 and cfg.cluster.backend == "ray":
        return train_on_ray(cfg, out, resume, progress)
    # The in-process engine is one worker, or the local backend's N in turn: each computes on as many threads
    # as a worker would.
    torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_worker)))
    add_local_paths(cfg.cluster.runtime_env)  # the job's own code, importable here as on Ray's nodes
    job = Job(cfg, out, resume=resume)
    bar = _bar(job.progress.total_rounds, job.state.version, progress)

    def on_round(event: RoundEvent, p: Progress) -> None:
        bar.update(1)
        if event.round % 10 == 0 or p.round == p.total_rounds:
            snap = p.snapshot()
            bar.set_postfix(postfix(snap.progress, snap.metrics, snap.bytes.total), refresh=False)

    previous = signal.signal(signal.SIGINT, lambda *_: job.stop())
    try:
        return job.run(on_round=on_round)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()


def train_on_ray(cfg: JobConfig, out: Path, resume: bool, progress: bool) -> JobResult:
    from coordinator.actor import connect_ray, start_job

    connect_ray(cfg.cluster.address)
    handle = start_job(cfg, str(out.resolve()), resume=resume)
    bar = None
    try:
        while True:
            try:
                poll = handle.poll(timeout=60)
                if poll.died is not None:
                    raise RuntimeError(f"the job's coordinator actor died: {poll.died}")
                if poll.result is not None:
                    return poll.result
                if poll.snapshot is not None:
                    p = poll.snapshot.progress
                    bar = bar or _bar(p.total_rounds, p.round, progress)
                    bar.n = p.round
                    bar.set_postfix(postfix(p, poll.snapshot.metrics, poll.snapshot.bytes.total), refresh=True)
                time.sleep(0.5)
            except KeyboardInterrupt:  # the job ends STOPPED after its current round, its checkpoint kept
                handle.request_stop()
    finally:
        if bar is not None:
            bar.close()
