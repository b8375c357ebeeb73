"""Shared pieces of `make bench`: the run context, machine facts, running one job, a pool observed round by round,
statistics, Markdown.

Every figure that reaches BENCHMARKS.md comes out of a function in this folder during the run that
writes it; the only constants are the paper's published figures and the issues' targets, each cited.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import ray
import torch

from coordinator.accounting import RoundBytes
from coordinator.config import JobConfig, load_config
from coordinator.documents import FinalMetrics, JobResult, JobStatus
from coordinator.job import Job, PoolFactory, Progress
from coordinator.rounds import Pool, RoundEvent
from workers.messages import Result, Sync, Task

PAPER_EPOCHS = 30  # the paper's MNIST runs: 30 epochs of 50 minibatches of 1000
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Context:
    """What every section needs: where the data is, where jobs write, how the run was started."""
    mnist: str  # folder with the four MNIST IDX files (also exported as $HES_MNIST_DIR)
    work: Path  # scratch folder for job outputs
    command: str  # the command line of this run, quoted into each section
    epochs: int  # epochs of the paper-length jobs (30 unless --epochs says otherwise)


@dataclass(frozen=True)
class JobSpec:
    """A job as a user would start it: a preset plus `--set` overrides."""
    preset: str
    overrides: tuple[str, ...] = ()

    def hes_command(self) -> str:
        sets = "".join(f" --set {o}" for o in self.overrides)
        return f"hes train --config {self.preset}{sets}"

    def config(self) -> JobConfig:
        return load_config(self.preset, list(self.overrides))

    def plus(self, *overrides: str) -> JobSpec:
        return JobSpec(self.preset, self.overrides + tuple(overrides))


def paper_length(ctx: Context, spec: JobSpec) -> JobSpec:
    """The spec with train.epochs set to ctx.epochs when that differs from the paper's 30."""
    return spec if ctx.epochs == PAPER_EPOCHS else spec.plus(f"train.epochs={ctx.epochs}")


class JobFailed(RuntimeError):
    """A job that ended without SUCCEEDED (Job.run turns divergence and a full disk into status FAILED)."""


@dataclass
class JobRun:
    spec: JobSpec
    result: JobResult
    events: list[RoundEvent] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch, as history.csv
    wall_seconds: float = 0.0
    out: Path | None = None  # the job's output folder (under Context.work)

    @property
    def final(self) -> FinalMetrics:
        return self.result.final

    def dev_range(self, last: int) -> str:
        """Lowest to highest dev accuracy over the last `last` epochs, e.g. "94.1% to 95.0%"."""
        devs = [row["dev_accuracy"] for row in self.history[-last:]]
        return f"{pct(min(devs), 1)} to {pct(max(devs), 1)}" if devs else "n/a"

    def dev_swing(self, last: int) -> float:
        """Highest minus lowest dev accuracy over the last `last` epochs (a fraction)."""
        devs = [row["dev_accuracy"] for row in self.history[-last:]]
        return max(devs) - min(devs) if devs else float("nan")

    def per_round(self, kind: str) -> float:
        """Mean seconds per round of `kind` (full | stochastic) from the result document."""
        n = getattr(self.result.rounds, kind)
        return getattr(self.result.seconds, f"{kind}_rounds") / n if n else float("nan")

    def median_round(self, kind: str, skip: int = 0) -> float:
        return median([e.seconds for e in self.events if e.kind == kind and e.round >= skip])


def run_job(ctx: Context, spec: JobSpec, pool_factory: PoolFactory | None = None,
            on_round: Callable[[RoundEvent, Progress], None] | None = None) -> JobRun:
    """Run one job to the end in this process (its rounds go through `pool_factory`, e.g. Ray)."""
    cfg = spec.config()
    out = Path(tempfile.mkdtemp(prefix=f"{cfg.name}-", dir=ctx.work))  # unique when jobs run side by side
    events: list[RoundEvent] = []

    def record(event: RoundEvent, progress: Progress) -> None:
        events.append(event)
        if on_round is not None:
            on_round(event, progress)

    started = time.perf_counter()
    job = Job(cfg, out, pool_factory=pool_factory)
    result = job.run(on_round=record)
    if result.status != JobStatus.SUCCEEDED:
        raise JobFailed(f"{spec.hes_command()}: {result.status} {result.message}")
    return JobRun(spec, result, events, [row.record() for row in job.history], time.perf_counter() - started, out)


@dataclass(frozen=True)
class JobFailure:
    """A job that ended without a model (diverged, NaN): a result to report, not an error of the benchmark."""
    spec: JobSpec
    message: str


def run_job_or_failure(ctx: Context, spec: JobSpec) -> JobRun | JobFailure:
    """run_job, with a job that ended FAILED returned as a JobFailure (the section reports it in its row); any
    other error is the benchmark's own and propagates."""
    try:
        return run_job(ctx, spec)
    except JobFailed as err:
        return JobFailure(spec, str(err))


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_jobs_side_by_side(ctx: Context, specs: Sequence[JobSpec], processes: int = 2,
                          fn: Callable[[Context, JobSpec], Any] = run_job) -> list[Any]:
    """Run in-process jobs `processes` at a time, each in a process of its own on one torch thread, for the
    accuracy sections whose figures do not depend on time (their wall seconds do: they shared the cores)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        return list(pool.map(fn, [ctx] * len(specs), specs))


P = TypeVar("P", bound=Pool)


class ObservedPool(Generic[P]):
    """A pool that passes every member of the Pool protocol (coordinator/rounds.py) on to `inner` and calls its
    hooks around each round; a section's subclass overrides the hooks with what it records."""

    def __init__(self, inner: P) -> None:
        self.inner = inner
        self.n_workers, self.overlaps, self.reduces = inner.n_workers, inner.overlaps, inner.reduces

    @property
    def alive(self) -> int:
        return self.inner.alive

    @property
    def restarting(self) -> int:
        return self.inner.restarting

    def sending(self, task: Task) -> Any:
        """Before `task` goes out; what it returns is handed to `collecting`."""
        return None

    def collecting(self, task: Task, mark: Any) -> Any:
        """Before the results are fetched (the round loop's own work comes between send and collect); what it
        returns is handed to `collected`."""
        return mark

    def collected(self, task: Task, mark: Any, results: list[Result], rb: RoundBytes) -> None:
        """After the round's results and bytes are in."""

    def closing(self) -> None:
        """Before the inner pool closes (it closes even when this raises)."""

    def send(self, task: Task) -> tuple[Any, Any]:
        mark = self.sending(task)
        return mark, self.inner.send(task)

    def collect(self, sent: tuple[Any, Any], task: Task,
                state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        mark, inner_sent = sent
        mark = self.collecting(task, mark)
        results, rb = self.inner.collect(inner_sent, task, state)
        self.collected(task, mark, results, rb)
        return results, rb

    def round(self, task: Task, state: Callable[[], Sync]) -> tuple[list[Result], RoundBytes]:
        return self.collect(self.send(task), task, state)

    def pull(self, version: int, rb: RoundBytes, source: int | None = None) -> Sync:
        return self.inner.pull(version, rb, source)

    def resync(self, worker: int, state: Sync, rb: RoundBytes) -> None:
        self.inner.resync(worker, state, rb)

    def rerun(self, worker: int, task: Task, rb: RoundBytes) -> Result:
        return self.inner.rerun(worker, task, rb)

    def close(self) -> None:
        try:
            self.closing()
        finally:
            self.inner.close()


def start_local_ray(num_cpus: int) -> None:
    """A fresh single-node Ray of `num_cpus` logical CPUs in this process (never someone else's cluster)."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 namespace="hes-bench")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return float("nan"), float("nan")
    q = np.percentile(np.asarray(xs, dtype=np.float64), [25, 75])
    return float(q[0]), float(q[1])


def machine() -> str:
    """One line: cores, CPU, library versions, threads per worker, load average (other users' work shows here)."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"nproc {len(os.sched_getaffinity(0))} ({model}), Python {platform.python_version()}, "
            f"torch {torch.__version__} on {torch.get_num_threads()} thread(s), ray {ray.__version__}, "
            f"numpy {np.__version__}; load average {load}")


def code_version() -> str:
    """The commit being measured, and whether the engine's folders differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "workers", "coordinator"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"git {sha}" + (", with uncommitted changes in workers/ or coordinator/" if dirty else "")


def pct(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{100 * x:.{digits}f}%"


def signed(x: float, digits: int = 2, unit: str = "") -> str:
    return "n/a" if x != x else f"{x:+.{digits}f}{unit}"


def ms(seconds: float, digits: int = 2) -> str:
    return "n/a" if seconds != seconds else f"{1000 * seconds:.{digits}f} ms"


def num(x: float, digits: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(ok: bool) -> str:
    return "**meets**" if ok else "**misses**"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str) -> str:
    return f"`{text}`"
