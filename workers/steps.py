"""The steps every trial and update is built from: descend, a seed's noise, a shift, a trial's cost.

Shared by workers/hybrid.py (argmin's trials, the decisions) and workers/search.py (antithetic trials): a leaf
below both, above workers/state.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from workers.models import Model
from workers.noise import Factors, NoiseSpec, lowrank_dense, perturbation_on
from workers.state import Hyper


@torch.no_grad()
def keep_frozen(out: torch.Tensor, theta: torch.Tensor, hyper: Hyper) -> torch.Tensor:
    """out (a full parameter vector) with its frozen parts (Hyper.frozen) copied back from theta, in place."""
    fw, fb = hyper.frozen
    if fw:
        out[:fw] = theta[:fw]
    if fb:
        nw = hyper.num_weights
        out[nw:nw + fb] = theta[nw:nw + fb]
    return out


@torch.no_grad()
def descend(theta: torch.Tensor, grad: torch.Tensor, hyper: Hyper) -> torch.Tensor:
    """theta - lr * grad, minus 2 * lr * l2 * W on the weights (seed/NOTES.md); frozen parts stay theta's."""
    out = theta - hyper.lr * grad
    if hyper.l2:
        nw = hyper.num_weights
        out[:nw] -= (2.0 * hyper.lr * hyper.l2) * theta[:nw]
    return keep_frozen(out, theta, hyper)


def noise_spec(model: Model, family: str = "gaussian", rank: int = 1) -> NoiseSpec:
    """The NoiseSpec of config keys `hybrid.noise` and `hybrid.noise_rank` for `model`'s weight matrices."""
    return NoiseSpec(family, rank, model.matrices, model.gaussian_tensors if family == "lowrank" else ())


def noise(seed: int, hyper: Hyper, device: torch.device) -> torch.Tensor:
    """The seed's perturbation z of the weight prefix, (num_weights,) float32 with unit-variance entries; a
    buffer of the caller's own (the gaussian trials write into it)."""
    z = (lowrank_dense(seed, hyper.noise).to(device) if hyper.noise.family == "lowrank"
         else perturbation_on(seed, hyper.num_weights, device))  # drawn on the device, the same bits everywhere
    if hyper.frozen[0]:
        z[:hyper.frozen[0]] = 0.0  # a frozen weight is never perturbed (x - 0.0 is x, to the bit)
    return z


@torch.no_grad()
def shift(base: torch.Tensor, z: torch.Tensor, hyper: Hyper) -> torch.Tensor:
    """base with the weights moved by -lr * (sigma / B) * z."""
    out = base.clone()
    out[: hyper.num_weights] -= hyper.shift_scale * z
    return out


def mean_cost(model: Model, logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(np.float32(model.loss.mean(logits, y).item()))


def batched_lowrank_costs(model: Model, base: torch.Tensor, x: torch.Tensor, y: torch.Tensor, hyper: Hyper,
                          slots: list[tuple[Factors, bool]]) -> tuple[float, list[float]]:
    """(base's cost, each slot's cost) in one batched forward (`Model.forward_trials`): slot 0 is base (zero
    factors); a slot (factors, negated) has weights base - lr*sigma/B * (+-A) B^T / sqrt(rank), never built.
    A frozen matrix (Hyper.frozen) gets zero factors in every slot."""
    spec = hyper.noise
    frozen_matrix = np.cumsum([rows * cols for rows, cols in spec.matrices]) <= hyper.frozen[0]  # whole matrices
    factors = []
    for i, (rows, cols) in enumerate(spec.matrices):
        a_parts, b_parts = [torch.zeros(rows, spec.rank)], [torch.zeros(cols, spec.rank)]
        for f, negated in slots:
            a = torch.zeros(rows, spec.rank) if frozen_matrix[i] else f[i][0]
            a_parts.append(-a if negated else a)  # negation is exact: -A gives the + c E trial
            b_parts.append(f[i][1])
        factors.append((torch.stack(a_parts).to(base.device), torch.stack(b_parts).to(base.device)))
    logits = model.forward_trials(base, x, factors, hyper.shift_scale / math.sqrt(spec.rank))
    losses = model.loss.trial_means(logits, y)
    costs = [float(c) for c in losses.cpu().numpy().astype(np.float32)]
    return costs[0], costs[1:]
