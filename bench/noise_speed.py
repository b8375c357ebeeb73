"""Section `noise`: the noise generator (workers/rng.py) against NumPy's Philox, side by side on one CPU thread.

Both draw n float32 N(0, 1) numbers for a seed: NumPy as the engine drew them before (`Generator(Philox(key=seed))
.standard_normal(n, dtype=float32)`), and `workers.rng.normal(seed, n)`, which draws bitwise the same numbers on
any CPU or CUDA GPU. The two alternate call by call, so the shared machine's load hits both alike.

Run alone:  .venv/bin/python bench/run.py --mnist ../shared/data/mnist --only noise   (under a minute)
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from common import Context, median, table

from workers import rng

SIZES = (238_510, 2_394_010)  # the weights of the paper's MLP [300] and of an MLP [3000] on MNIST... and biases
REPEATS = 41


def numpy_philox(seed: int, n: int) -> np.ndarray:
    return np.random.Generator(np.random.Philox(key=seed)).standard_normal(n, dtype=np.float32)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(n: int, repeats: int = REPEATS) -> tuple[float, float]:
    """Median seconds of (NumPy's Philox, ours) for n draws, alternating."""
    ours, theirs = [], []
    for seed in range(repeats):
        theirs.append(timed(lambda: numpy_philox(seed, n)))  # noqa: B023 (called at once)
        ours.append(timed(lambda: rng.normal(seed, n)))  # noqa: B023
    return median(theirs), median(ours)


def run(ctx: Context) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [(n, *compare(n)) for n in SIZES]
    finally:
        torch.set_num_threads(threads)
    rows = [[f"{n:,}", f"{1000 * a:.2f}", f"{1000 * b:.2f}", f"{b / a:.2f}", "**meets**" if b <= a else "**misses**"]
            for n, a, b in results]
    return "\n".join([
        f"One torch thread, {REPEATS} draws of each size by each generator, alternating; medians. Target (issue 13): "
        "the new generator at least as fast as NumPy's Philox draw on the CPU.",
        "",
        table(["draws n", "NumPy Philox (ms)", "workers/rng.py (ms)", "ratio", "target"], rows),
    ])
