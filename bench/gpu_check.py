"""`make gpu-check`: GPU workers. Writes the section "GPU check" of BENCHMARKS.md; exits 0 on a machine without one.

On a machine with a CUDA GPU: (1) the paper's MLP job (MNIST, r = 2, K = 10) for one epoch with two Ray workers,
worker 0 on the GPU and worker 1 on the CPU, every replica's digest compared with the coordinator's after every
round: the replicas must agree to the bit; (2) seconds per round, full and stochastic, of the paper's MLP [300]
and of an MLP [3000] at K = 10 and K = 100 on one GPU worker (one epoch each, the first rounds left out).
Without a CUDA GPU it writes the section saying where it ran and that no GPU was there.

Run:  .venv/bin/python bench/gpu_check.py [--mnist ../shared/data/mnist] [--out BENCHMARKS.md]   (a few minutes)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from common import Context, JobRun, JobSpec, code_version, machine, ms, run_job, table
from sections import wrap, write_section

from coordinator.accounting import Counters
from coordinator.config import JobConfig
from coordinator.parts import JobParts
from coordinator.ray_pool import RayPool, ray_pool

PAPER = JobSpec("paper-hes-r2", ("train.epochs=1",))
MIXED = PAPER.plus("cluster.workers=2", "cluster.gpus_per_worker=1", "hybrid.replica_check_every=1")
TIMED = [(hidden, k) for hidden in (300, 3000) for k in (10, 100)]
SKIP_ROUNDS = 4  # CUDA's first kernels and allocations
FAILED = "**the check failed**"  # in the section's text when the replicas differ or the job was not mixed


@dataclass(frozen=True)
class Mixed:
    run: JobRun
    devices: list[str]  # each worker's device, as its actor reports it

    @property
    def agree(self) -> bool:
        checks = self.run.result.replica_checks
        return checks.checked > 0 and checks.mismatches == 0


def mixed_job(ctx: Context, spec: JobSpec, gpu_workers: int) -> Mixed:
    """`spec` with its first `gpu_workers` workers on a GPU each and the others on CPUs."""
    pools: list[RayPool] = []
    devices: list[str] = []

    def factory(cfg: JobConfig, parts: JobParts, counters: Counters) -> RayPool:
        pools.append(ray_pool(cfg, parts, counters, gpu_workers=gpu_workers))
        devices.extend(info.device for info in ray.get([a.info.remote() for a in pools[-1].actors]))
        return pools[-1]

    return Mixed(run_job(ctx, spec, pool_factory=factory), devices)


def timed_spec(hidden: int, k: int) -> JobSpec:
    return PAPER.plus(f"model.hidden=[{hidden}]", f"hybrid.k={k}", "cluster.workers=1", "cluster.gpus_per_worker=1")


DRAWS = ((0, 238_200), (2**62 + 7, 2_382_000), (123_456_789, 1 << 20))  # (seed, n): the paper's and MLP 3000's weights


def draw_check() -> list[tuple[int, int, bool]]:
    """workers/rng.py's draw on the GPU against the CPU's, for a few seeds: (seed, n, bitwise equal)."""
    from workers import rng

    return [(seed, n, torch.equal(rng.normal(seed, n, "cuda").cpu(), rng.normal(seed, n, "cpu"))) for seed, n in DRAWS]


def run(ctx: Context) -> str:
    if not torch.cuda.is_available():
        return (f"No CUDA GPU here (`torch.cuda.is_available()` is False on {platform.node()}, torch "
                f"{torch.__version__}), so nothing was measured; `make gpu-check` exits 0. On a machine with a CUDA "
                "GPU it runs the paper's MLP with a GPU worker beside a CPU worker, compares their replicas' digests "
                "after every round, and times the rounds of the paper's MLP and of an MLP [3000] at K = 10 and 100.")
    draws = draw_check()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), num_gpus=torch.cuda.device_count(),
             include_dashboard=False, log_to_driver=False, namespace="hes-gpu-check")
    try:
        mixed = mixed_job(ctx, MIXED, gpu_workers=1)
        timed = [run_job(ctx, timed_spec(hidden, k), pool_factory=ray_pool) for hidden, k in TIMED]
    finally:
        ray.shutdown()
    return render(mixed, timed, draws)


def render(mixed: Mixed, timed: list[JobRun], draws: list[tuple[int, int, bool]] | None = None) -> str:
    checks = mixed.run.result.replica_checks
    draws = draws or []
    drawn = "; ".join(f"seed {seed}, {n:,} numbers: {'bitwise equal' if same else 'they differ: ' + FAILED}"
                      for seed, n, same in draws)
    rows = [[f"MLP [{hidden}]", k, ms(run.median_round("full", SKIP_ROUNDS)),
             ms(run.median_round("stochastic", SKIP_ROUNDS))] for (hidden, k), run in zip(TIMED, timed, strict=True)]
    return "\n".join([
        f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}.",
        "",
        f"The noise generator (workers/rng.py) on the GPU against the CPU: {drawn or 'not compared'}.",
        "",
        f"Mixed job `{MIXED.hes_command()}`, worker 0 on the GPU and worker 1 on a CPU (the workers reported "
        f"{', '.join(mixed.devices)}): {checks.checked} replica checks, {checks.mismatches} mismatches: "
        f"{'the replicas agree to the bit' if mixed.agree else 'the replicas differ: ' + FAILED}; dev accuracy "
        f"after the epoch {100 * (mixed.run.final.dev_accuracy or float('nan')):.2f}%."
        + ("" if mixed.devices == ["cuda", "cpu"] else f" Not a mixed job (cuda, cpu): {FAILED}."),
        "",
        f"Seconds per round on one GPU worker (`{timed_spec(300, 10).hes_command()}` with model.hidden and hybrid.k "
        f"as below; medians over the epoch's rounds after the first {SKIP_ROUNDS}):",
        "",
        table(["model", "K", "full round", "stochastic round"], rows),
    ])


def block(ctx: Context) -> tuple[str, bool]:
    """The section as `make bench` writes its sections (command, dates, code, machine, then the body); whether
    the check passed (no GPU counts as passed)."""
    started = datetime.datetime.now().astimezone()
    before, version = machine(), code_version()
    body = run(ctx)
    finished = datetime.datetime.now().astimezone()
    head = (f"## GPU check\n\n- command: `{ctx.command}` (`make gpu-check`)\n"
            f"- ran: {started:%Y-%m-%d %H:%M:%S %Z} to {finished:%H:%M:%S} on {platform.node()}\n"
            f"- code: {version}\n- machine at the start: {before}\n- machine at the end: {machine()}\n\n")
    return wrap("gpu", head + body), FAILED not in body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=os.environ.get("HES_MNIST_DIR", "../shared/data/mnist"),
                        help="folder with the four MNIST IDX files (only read with a GPU)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="the Markdown file to write")
    args = parser.parse_args(argv)
    mnist = str(Path(args.mnist).resolve())
    os.environ["HES_MNIST_DIR"] = mnist  # the presets read MNIST from $HES_MNIST_DIR (data.path: null)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="hes-gpu-check-") as work:
        ctx = Context(mnist, Path(work), shlex.join([Path(sys.executable).name, *sys.argv]), 1)
        section, ok = block(ctx)
    write_section(out, "gpu", section)
    where = f"ran on {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no CUDA GPU here"
    print(f"gpu-check: {where}; wrote {out}" + ("" if ok else f"; {FAILED}"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
