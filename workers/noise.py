"""Seeded Gaussian perturbations that every replica regenerates bit for bit from the seed alone.

The draw is made on the CPU by NumPy's counter-based Philox bit generator keyed by the seed, then moved
to the model's device: Torch's CPU and CUDA generators give different numbers for one seed, NumPy's
Philox does not depend on the device, the process or the machine. No global RNG is touched, and one
seed yields ONE stream over the whole weight prefix of the flat vector, so no two tensors share it.
"""
from __future__ import annotations

import hashlib
import struct

import numpy as np

SEED_BITS = 63  # seeds travel as signed 64-bit integers


def perturbation(seed: int, n: int) -> np.ndarray:
    """z ~ N(0, 1)^n as float32, a pure function of (seed, n)."""
    gen = np.random.Generator(np.random.Philox(key=seed))
    return gen.standard_normal(n, dtype=np.float32)


def trial_seed(job_seed: int, round_index: int, worker: int, trial: int) -> int:
    """The seed of trial `trial` of `worker` in round `round_index`: distinct, reproducible, 63 bits."""
    digest = hashlib.blake2b(struct.pack("<qqqq", job_seed, round_index, worker, trial), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
