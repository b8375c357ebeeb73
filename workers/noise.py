"""Seeded perturbations (Gaussian or low-rank) that every replica regenerates bit for bit from the seed alone.

The draw is made on the replica's own device by the counter-based generator of workers/rng.py, built from
torch integer operations and exactly rounded float operations only, so it gives bitwise the same numbers on
any CPU and any CUDA GPU (torch's own CPU and CUDA generators differ for one seed, and libm's log or erfinv
differ in the last bit between devices); a CUDA worker draws without a round trip through the host. No global
RNG is touched, and one seed yields ONE stream over the whole weight prefix of the flat vector, so no two
tensors share it.
A low-rank trial draws its factors from the same generator (`lowrank_factors`), far fewer numbers.
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from workers import rng

SEED_BITS = 63  # seeds travel as signed 64-bit integers


def perturbation(seed: int, n: int) -> np.ndarray:
    """z ~ N(0, 1)^n as float32 on the CPU, a pure function of (seed, n): `perturbation_on(seed, n, "cpu")`."""
    return rng.normal(seed, n).numpy()


def perturbation_on(seed: int, n: int, device: torch.device | str, out: torch.Tensor | None = None) -> torch.Tensor:
    """z ~ N(0, 1)^n as a float32 tensor drawn on `device` (into `out` when given), bitwise the same everywhere."""
    return rng.normal(seed, n, device, out)


def trial_seed(job_seed: int, round_index: int, worker: int, trial: int) -> int:
    """The seed of trial `trial` of `worker` in round `round_index`: distinct, reproducible, 63 bits."""
    digest = hashlib.blake2b(struct.pack("<qqqq", job_seed, round_index, worker, trial), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


@dataclass(frozen=True)
class NoiseSpec:
    """The family of a trial's perturbation of the weight prefix, and what it needs to rebuild one from a seed.

    gaussian: z ~ N(0, 1) for every weight, `perturbation(seed, num_weights)`.
    lowrank: per weight tensor, seen as a matrix (rows = its first dimension, a conv kernel's out channels;
    cols = the rest, in * kh * kw), E = A B^T / sqrt(rank) with A (rows x rank) and B (cols x rank) N(0, 1), so
    every entry of E has unit variance, as in the Gaussian case. `matrices` lists (rows, cols) in the flat
    vector's order. `gaussian` lists the matrices that a lowrank trial perturbs with plain N(0, 1) noise instead
    (a module's tensors that are no Linear or conv weight: workers/module_model.py); their rows * cols numbers
    take their place in the stream.
    """
    family: str = "gaussian"  # gaussian | lowrank
    rank: int = 1
    matrices: tuple[tuple[int, int], ...] = ()
    gaussian: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in ("gaussian", "lowrank"):
            raise ValueError(f"hybrid.noise: unknown family {self.family!r}")
        if self.rank < 1:
            raise ValueError(f"hybrid.noise_rank: must be at least 1, got {self.rank}")
        if self.family == "lowrank" and not self.matrices:
            raise ValueError("hybrid.noise: lowrank needs the weight matrices' shapes")

    @property
    def draws(self) -> int:
        """Normal numbers one lowrank trial draws: (rows + cols) * rank per weight matrix."""
        return sum(rows * cols if i in self.gaussian else (rows + cols) * self.rank
                   for i, (rows, cols) in enumerate(self.matrices))


Factors = list[tuple[torch.Tensor, torch.Tensor]]  # per weight matrix: A (rows, rank), B (cols, rank)


def lowrank_factors(seed: int, spec: NoiseSpec) -> Factors:
    """A and B of every weight matrix from ONE stream `perturbation(seed, spec.draws)`, float32 on the CPU.

    Order of the stream: matrix by matrix in the flat vector's order; within a matrix A (rows x rank,
    row-major), then B (cols x rank, row-major). Whatever generator `perturbation` uses, lowrank follows it.
    """
    if spec.gaussian:
        raise ValueError("lowrank_factors: the spec has Gaussian tensors; lowrank_dense draws those")
    return [(a, b) for a, b in _stream(seed, spec)]  # type: ignore[misc]


def _stream(seed: int, spec: NoiseSpec) -> list[tuple[torch.Tensor, torch.Tensor] | torch.Tensor]:
    """Per matrix in order: its factors (A, B), or for a Gaussian one its rows * cols numbers, from ONE stream."""
    z = torch.as_tensor(perturbation(seed, spec.draws)).cpu()
    out: list[tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = []
    at = 0
    for i, (rows, cols) in enumerate(spec.matrices):
        if i in spec.gaussian:
            out.append(z[at:at + rows * cols])
            at += rows * cols
            continue
        a = z[at:at + rows * spec.rank].view(rows, spec.rank)
        at += rows * spec.rank
        b = z[at:at + cols * spec.rank].view(cols, spec.rank)
        at += cols * spec.rank
        out.append((a, b))
    return out


def lowrank_dense(seed: int, spec: NoiseSpec) -> torch.Tensor:
    """E of every weight matrix, flattened row-major and concatenated: (num_weights,) float32.

    Built with elementwise products and sums in a fixed order (column j = 0, 1, ..., rank - 1), not a matrix
    product, so every replica on every machine gets the same bits (a BLAS may sum in any order)."""
    parts = []
    scale = 1.0 / math.sqrt(spec.rank)
    for part in _stream(seed, spec):
        if isinstance(part, torch.Tensor):
            parts.append(part)
            continue
        a, b = part
        e = a[:, 0:1] * b[:, 0]
        for j in range(1, spec.rank):
            e += a[:, j:j + 1] * b[:, j]
        if spec.rank > 1:
            e *= scale
        parts.append(e.reshape(-1))
    return torch.cat(parts)
