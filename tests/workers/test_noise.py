"""Seeded noise: bitwise identical across processes, distinct across seeds, no global RNG touched."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import torch

from workers.noise import perturbation, trial_seed

SNIPPET = ("import hashlib,sys; from workers.noise import perturbation; "
           "sys.stdout.write(hashlib.sha256(perturbation(123456789, 238200).tobytes()).hexdigest())")


def test_identical_bytes_in_another_process() -> None:
    here = hashlib.sha256(perturbation(123456789, 238200).tobytes()).hexdigest()
    there = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True).stdout
    assert here == there


def test_distinct_seeds_give_distinct_draws() -> None:
    a, b = perturbation(1, 1000), perturbation(2, 1000)
    assert a.dtype == np.float32 and not np.array_equal(a, b)
    assert abs(float(a.mean())) < 0.15 and abs(float(a.std()) - 1) < 0.1


def test_prefix_property_and_no_global_rng() -> None:
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    long, short = perturbation(7, 5000), perturbation(7, 100)
    assert np.array_equal(long[:100], short)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_trial_seeds_distinct_and_63_bit() -> None:
    seeds = {trial_seed(100, t, w, k) for t in range(20) for w in range(4) for k in range(10)}
    assert len(seeds) == 800
    assert all(0 <= s < 2**63 for s in seeds)
    assert trial_seed(100, 3, 1, 2) == trial_seed(100, 3, 1, 2)
