"""Section `fanout`: the coordinator's time per stochastic round against the number of Ray workers.

A tiny job (digits, hidden [16], K = 1) on a local Ray with N = 1, 2, 4, ..., 32 worker actors of a fraction of
a CPU each, so the workers' compute is next to nothing and what grows with N is the coordinator's fan-out: one
call per worker out, one reply per worker back. Each round's time is split into the coordinator's own CPU time
(encoding, submitting, decoding, accounting: the thread's CPU seconds) and the rest (waiting for the replies).
The slope of the median round time over N, in ms per added worker, says what a 1,000-worker job would pay.

Run alone:  .venv/bin/python bench/run.py --mnist ../shared/data/mnist --only fanout   (about 5 minutes)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from common import Context, JobSpec, ObservedPool, median, num, run_job, start_local_ray, table

from coordinator.accounting import Counters, RoundBytes
from coordinator.config import JobConfig
from coordinator.parts import JobParts
from coordinator.ray_pool import RayPool, ray_pool
from workers.messages import Result, RoundKind, Task

WORKERS = (1, 2, 4, 8, 16, 32)
RAY_CPUS = 2  # this machine's cores; 32 workers x 1/16 CPU fit on it
CPUS_PER_WORKER = 1 / 16
EPOCHS = 6  # digits: 13 batches of 100 per epoch, r = 2: about 38 stochastic rounds per N
WARMUP_ROUNDS = 4  # the first rounds warm Ray's connections to each actor
SLOPE_TARGET_MS = 0.5  # issue 13: at most 0.5 ms per added worker
AT_SCALE = 1000  # issue 13: what the slope means at 1,000 workers
SPEC = JobSpec("digits-demo", ("model.hidden=[16]", "hybrid.k=1", "hybrid.r=2", f"train.epochs={EPOCHS}",
                               f"cluster.cpus_per_worker={CPUS_PER_WORKER}"))


TICKS = os.sysconf("SC_CLK_TCK")


def process_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (/proc, in clock ticks: summed over many rounds)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return total / TICKS


class TimedPool(ObservedPool[RayPool]):
    """A RayPool whose rounds record wall and CPU seconds and bytes per worker (stochastic rounds only)."""

    def __init__(self, inner: RayPool) -> None:
        super().__init__(inner)
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.up: list[int] = []  # bytes up per worker per round
        self.down: list[int] = []
        self.workers_cpu: list[float] = []  # CPU seconds of all the worker processes in the round
        self.pids: list[int] = []

    def sending(self, task: Task) -> tuple[float, float, float]:
        if not self.pids:
            self.pids = [info.pid for info in ray.get([a.info.remote() for a in self.inner.actors])]
        workers_cpu = process_seconds(self.pids)  # read outside the round's window
        return time.perf_counter(), time.thread_time(), workers_cpu

    def collecting(self, task: Task, mark: tuple[float, float, float]) -> tuple[float, float, float, float]:
        wall, cpu, workers_cpu = mark
        cpu_send = time.thread_time() - cpu  # the settle between send and collect is the round loop's, not ours
        return wall, cpu_send, time.thread_time(), workers_cpu

    def collected(self, task: Task, mark: tuple[float, float, float, float], results: list[Result],
                  rb: RoundBytes) -> None:
        wall, cpu_send, cpu, workers_cpu = mark
        if task.kind == RoundKind.STOCHASTIC and not task.want_digest:
            n = len(results)
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(cpu_send + time.thread_time() - cpu)
            self.up.append((rb.up["stochastic"] + rb.up["sync"]) // n)
            self.down.append((rb.down["stochastic"] + rb.down["sync"]) // n)
            self.workers_cpu.append(process_seconds(self.pids) - workers_cpu)


@dataclass(frozen=True)
class Point:
    workers: int
    wall_ms: float  # median over the measured stochastic rounds
    cpu_ms: float
    workers_cpu_ms: float  # mean CPU time of one worker process per round (Ray's share and the step)
    up: int
    down: int
    rounds: int


def measure(ctx: Context, n: int) -> Point:
    pools: list[TimedPool] = []

    def factory(cfg: JobConfig, parts: JobParts, counters: Counters) -> TimedPool:
        pools.append(TimedPool(ray_pool(cfg, parts, counters)))
        return pools[-1]

    run_job(ctx, SPEC.plus(f"cluster.workers={n}"), pool_factory=factory)
    p = pools[0]
    wall, cpu, workers = p.wall[WARMUP_ROUNDS:], p.cpu[WARMUP_ROUNDS:], p.workers_cpu[WARMUP_ROUNDS:]
    return Point(n, 1000 * median(wall), 1000 * median(cpu), 1000 * sum(workers) / len(workers) / n, max(p.up),
                 max(p.down), len(wall))


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    b, a = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)
    return float(b), float(a)


def run(ctx: Context) -> str:
    if ray.is_initialized():
        ray.shutdown()  # a Ray of exactly RAY_CPUS logical CPUs, whatever an earlier section started
    start_local_ray(RAY_CPUS)
    try:
        points = [measure(ctx, n) for n in WORKERS]
    finally:
        ray.shutdown()
    return render(points)


def render(points: list[Point]) -> str:
    ns = [float(p.workers) for p in points]
    b_wall, a_wall = slope(ns, [p.wall_ms for p in points])
    b_cpu, a_cpu = slope(ns, [p.cpu_ms for p in points])
    worker_ms = median([p.workers_cpu_ms for p in points])
    rows = [[p.workers, f"{p.wall_ms:.2f}", f"{p.cpu_ms:.2f}", f"{p.workers_cpu_ms:.2f}", p.up, p.down, p.rounds]
            for p in points]
    verdict = "meets" if b_wall <= SLOPE_TARGET_MS else "misses"
    return "\n".join([
        f"`{SPEC.hes_command()} --set cluster.workers=N` on a local Ray of {RAY_CPUS} CPUs, "
        f"{CPUS_PER_WORKER:g} CPU per worker actor; the coordinator in this process. Per stochastic round, over "
        f"the rounds after the first {WARMUP_ROUNDS} (replica-check rounds left out): the median wall time from "
        "send to the last decoded reply, the median CPU time of the coordinator's thread in it, the mean CPU time "
        "of one worker process in it (Ray's share and the step; from /proc), and the payload bytes one worker "
        "received (down) and sent (up).",
        "",
        table(["workers N", "round (ms)", "coordinator CPU (ms)", "CPU per worker process (ms)",
               "bytes up / worker", "bytes down / worker", "rounds"], rows),
        "",
        f"Slope of the round time: **{b_wall:.3f} ms per added worker** (least squares over N, intercept "
        f"{a_wall:.2f} ms): the target of at most {SLOPE_TARGET_MS} ms **{verdict}** here. Of it, the "
        f"coordinator's own CPU time is **{b_cpu:.3f} ms per worker** (intercept {a_cpu:.2f} ms). The rest is the "
        f"workers' turns on the {RAY_CPUS} cores they share with the coordinator: each worker process spends about "
        f"{worker_ms:.2f} ms of CPU per round, so N of them add about {worker_ms / RAY_CPUS:.2f} ms per worker to "
        "the round on this machine, a cost a cluster (a core per worker) runs in parallel.",
        "",
        f"At {AT_SCALE:,} workers: {num(a_wall + b_wall * AT_SCALE, 0)} ms per stochastic round by the wall-time "
        f"line, which holds only while {AT_SCALE:,} workers share {RAY_CPUS} cores; with a core per worker the "
        f"coordinator's part bounds it, {num(a_cpu + b_cpu * AT_SCALE, 0)} ms per round, for "
        f"{points[-1].up + points[-1].down} payload bytes per worker, "
        f"{num((points[-1].up + points[-1].down) * AT_SCALE)} "
        "bytes per round in all.",
    ])
