"""`make bench`: measure Hybrid-ES on MNIST and write BENCHMARKS.md from the numbers measured in the run.

Run:  .venv/bin/python bench/run.py --mnist ../shared/data/mnist --out BENCHMARKS.md [--only table,rounds]
Sections (all by default, about 40 minutes on 2 cores): table (the paper's Fig. 7 in process), rounds
(engine vs plain PyTorch), ray (2 workers: hybrid, stale, localsgd, backprop), bytes (payload per round,
three models), overhead (1 Ray worker vs in process), wire (Ray's framing captured with tshark), seeds
(five seeds of the r=2 rows and the reference, about 35 minutes more), fanout (4 to 32 tiny workers on 4
nodes, direct and through relays, about 6 minutes), noise (the generator against NumPy's, a minute), gpu
(`make gpu-check`; says so without a GPU),
fast-trials (issue 13: low-rank and Gaussian trials, seconds, accuracy over seeds, payload, memory; about 45
minutes), own-model (issue 14: the examples/ jobs against backprop, stale and localsgd; about 20 minutes),
worker-memory (issue 15: peak memory of one worker's rounds per mode, fresh processes, about a minute),
science (issue 15: the IID, non-IID and fine-tuning comparisons of "Beyond the paper", 3 seeds a row on
the local backend, two jobs side by side; about 70 minutes on 2 cores), blackbox (issue 23: CartPole-v1 and
Acrobot-v1 on 1, 2, 4 Ray workers against a plain OpenAI-ES loop and EvoTorch's PGPE; about 17 minutes),
network (issue 20: the paper MLP over namespace hosts with tc-limited links, H-ES against Ray Train's DDP; root,
about 40 minutes), allreduce (issue 21: full rounds through the server, a gloo ring and DDP at N = 2, 3, 6 over
100 Mbit/s and 10 Mbit/s links, and the time to 95% dev; root, about 20 minutes). With --only, the other sections
already in --out are kept as they were.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import accuracy
import allreduce
import blackbox
import fanout
import fast_trials
import gpu_check
import network
import noise_speed
import own_model
import ray
import ray_jobs
import science
import speed
import stability
import torch
import wire
import worker_memory
from common import PAPER_EPOCHS, Context, code_version, machine
from sections import wrap, write_section

SECTIONS: dict[str, tuple[str, Callable[[Context], str]]] = {
    "table": ("1. The paper's table on MNIST (in process)", accuracy.run),
    "rounds": ("2. Seconds per round: engine vs plain PyTorch (in process)", speed.run),
    "ray": ("3. Ray, 2 workers: hybrid vs stale, localsgd and backprop", ray_jobs.run_ray),
    "bytes": ("4. Payload per worker per round, three model sizes", ray_jobs.run_bytes),
    "overhead": ("5. Orchestration overhead: 1 Ray worker vs in process", ray_jobs.run_overhead),
    "wire": ("6. Ray's framing on the wire (tshark, multi-node Cluster)", wire.run),
    "seeds": ("7. Five seeds of the r=2 rows (in process)", stability.run),
    "fast-trials": ("Fast trials: low-rank trials batched, Gaussian trials lean (issue 13)", fast_trials.run),
    "fanout": ("Fan-out: the coordinator's time per stochastic round against the number of workers", fanout.run),
    "noise": ("Noise generator: workers/rng.py against NumPy's Philox (CPU)", noise_speed.run),
    "gpu": ("GPU check (`make gpu-check`)", gpu_check.run),
    "own-model": ("Your own model: the three examples/ jobs, backprop against H-ES and its controls (issue 14)",
                  own_model.run),
    "worker-memory": ("Worker memory: the peak of one worker's round, per mode (issue 15)", worker_memory.run),
    "science": ("Beyond the paper: where seed-only rounds win (issue 15)", science.run),
    "blackbox": ("Black-box objectives: a policy trained by its episode returns (issue 23)", blackbox.run),
    "network": ("Over a real network: a head and 3 worker hosts, links of 1 Gbit/s, 100 Mbit/s and 10 Mbit/s "
                "(issue 20)", network.run),
    "allreduce": ("Full rounds among the workers: server, allreduce and Ray Train DDP over the network sandbox "
                  "(issue 21)", allreduce.run),
}


def section(key: str, ctx: Context) -> tuple[str, bool]:
    """Run one section; its Markdown block (with command, dates and machine) and whether it succeeded."""
    title, fn = SECTIONS[key]
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    before, version = machine(), code_version()
    try:
        body, ok = fn(ctx), True
    except Exception:  # a failed section is reported in the file, and the run goes on to the next
        body, ok = "**This section failed**; the error:\n\n```\n" + traceback.format_exc() + "```", False
    finished = datetime.datetime.now().astimezone()
    head = (f"## {title}\n\n"
            f"- command: `{ctx.command}` (this section alone: add `--only {key}`)\n"
            f"- ran: {started:%Y-%m-%d %H:%M:%S %Z} to {finished:%H:%M:%S} ({time.perf_counter() - t0:.0f} s)\n"
            f"- code: {version}\n- machine at the start: {before}\n- machine at the end: {machine()}\n\n")
    return wrap(key, head + body), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", required=True, help="folder with the four MNIST IDX files")
    parser.add_argument("--out", default="BENCHMARKS.md", help="the Markdown file to write")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS,
                        help="epochs of the paper-length jobs (table, ray); less than 30 is a smoke run")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    mnist = str(Path(args.mnist).resolve())
    if not Path(mnist).is_dir():
        parser.error(f"--mnist: {mnist} is not a folder")
    os.environ["HES_MNIST_DIR"] = mnist  # the presets read MNIST from $HES_MNIST_DIR (data.path: null)
    torch.set_num_threads(1)  # the in-process engine and the coordinator compute as one 1-CPU worker does
    out = Path(args.out)
    command = shlex.join([Path(sys.executable).name, *sys.argv]).replace(shlex.quote(args.mnist), "$HES_MNIST_DIR")
    failed = []
    with tempfile.TemporaryDirectory(prefix="hes-bench-") as work:
        ctx = Context(mnist, Path(work), command, args.epochs)
        for key in (k for k in SECTIONS if k in keys):
            print(f"bench: {key} ...", file=sys.stderr, flush=True)
            block, ok = section(key, ctx)
            write_section(out, key, block, list(SECTIONS))  # after every section: a late failure loses nothing
            if not ok:
                failed.append(key)
                print(f"bench: {key} failed, see {out}", file=sys.stderr, flush=True)
    if ray.is_initialized():
        ray.shutdown()
    print(f"bench: wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
