"""Seed-only rounds that use every trial's cost: antithetic ES trials, guided directions, shared seeds, zo.

A round of rule `es` or `guided` tries k / 2 seeds per worker, each twice: the trial of sign +1 is the base
step minus c * E (c = lr * sigma / B, as argmin's trials), the one of sign -1 the base plus c * E, where E is
the seed's perturbation. Costs travel up in that order (+, -, +, -, ...). The coordinator weighs them
(coordinator/combine.py) into one weight w_i per seed, and every replica takes the same step

    theta' = base - c * sum_i w_i E_i        (seeds in the order of the decision's array, one term at a time)

where base is descend(theta, grad) (the stale step) in hybrid mode, and theta itself in mode zo, which has no
gradient at all (its first round searches around the initial parameters). The sum is built with elementwise
float32 products and sums in a fixed order, so it is bitwise the same on every replica.

Seeds are a pure function of (job seed, round, worker, index) (workers/noise.py trial_seed), so the decision
carries only the weights. With trials `shared` the worker slot is SHARED_WORKER: every worker tries the same
seeds, each on its own shard of the minibatch, and the coordinator adds their costs up weighted by examples.

Guided perturbations (combine `guided`): E = sqrt(alpha) * z + sqrt((1 - alpha) * nw / m) * sum_j zeta_j g_j/|g_j|
over the m gradients kept (z the seed's isotropic noise on the nw weights, zeta m normal numbers drawn from a
second seed), so E has about the squared norm of an isotropic one (nw) and its gradient part moves the step
length along the stale gradient as well as across the older ones.
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from workers.models import ACTIVATIONS, Model
from workers.noise import SEED_BITS, lowrank_factors, perturbation_on, trial_seed
from workers.state import SHARED_WORKER, Decision, HybridState, Hyper, Search
from workers.steps import batched_lowrank_costs, descend, mean_cost, noise


def round_seeds(search: Search, t: int, worker: int) -> list[int]:
    """The seeds `worker` tries in round t."""
    slot = SHARED_WORKER if search.trials == "shared" else worker
    return [trial_seed(search.job_seed, t, slot, i) for i in range(search.seeds_per_worker)]


def decision_seeds(search: Search, t: int, n: int) -> list[int]:
    """The seeds of the n weights of round t's es decision: shared, the round's seeds; independent, worker
    slot j // (k/2), its seed j % (k/2) (a worker that sent nothing has weights 0)."""
    if search.trials == "shared":
        return [trial_seed(search.job_seed, t, SHARED_WORKER, i) for i in range(n)]
    s = search.seeds_per_worker
    return [trial_seed(search.job_seed, t, j // s, j % s) for j in range(n)]


def trial_base(state: HybridState, hyper: Hyper) -> torch.Tensor:
    """The point the trials spread around: the stale step descend(theta, grad), or theta in mode zo."""
    if hyper.search is not None and hyper.search.zo:
        return state.theta
    if state.grad is None:
        raise ValueError("a stochastic round needs a gradient: the first round of a job must be full")
    return descend(state.theta, state.grad, hyper)


def _sub_seed(seed: int) -> int:
    """The seed of a guided trial's subspace coefficients: distinct from the isotropic stream's."""
    digest = hashlib.blake2b(struct.pack("<q", seed) + b"guided", digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def subspace_coefficients(seed: int, m: int) -> np.ndarray:
    """zeta of a guided trial: the m coefficients of its gradient part (the coordinator derives them too)."""
    return perturbation_on(_sub_seed(seed), m, "cpu").numpy()


def gradient_norm(g: torch.Tensor) -> float:
    """|g| summed in float64 by NumPy's pairwise sum: the same number on every replica (no BLAS, no threads)."""
    a = g.detach().cpu().numpy().astype(np.float64)
    return math.sqrt(float(np.sum(a * a)))


def direction(seed: int, state: HybridState, hyper: Hyper, norms: list[float] | None = None) -> torch.Tensor:
    """E of `seed`: (nw,) for es (the weights only, as argmin's trials), (P,) for guided (its gradient part moves
    the biases too). A buffer of the caller's own. `norms`: the history's gradient_norm values, if known."""
    search = hyper.search
    if search is None or search.rule != "guided" or not state.history:
        return noise(seed, hyper, state.theta.device)
    nw, m = hyper.num_weights, len(state.history)
    out = torch.zeros_like(state.theta)
    alpha = search.guided_alpha
    if alpha > 0:
        out[:nw] = noise(seed, hyper, state.theta.device) * math.sqrt(alpha)
    if alpha < 1:
        zeta = subspace_coefficients(seed, m).tolist()
        scale = math.sqrt((1.0 - alpha) * nw / m)
        norms = norms or [gradient_norm(g) for g in state.history]
        for j, g in enumerate(state.history):  # oldest first, one term at a time: the same bits everywhere
            norm = norms[j]
            if norm > 0:
                out += g * (scale * zeta[j] / norm)
    return out


@torch.no_grad()
def es_costs(model: Model, state: HybridState, seeds: list[int], x: torch.Tensor, y: torch.Tensor,
             hyper: Hyper) -> tuple[float, list[float]]:
    """(the base's cost, the 2 * len(seeds) antithetic trials' costs in the order +E_0, -E_0, +E_1, ...)."""
    base = trial_base(state, hyper)
    c = hyper.shift_scale
    guided = hyper.search is not None and hyper.search.rule == "guided" and bool(state.history)
    if hyper.noise.family == "lowrank" and not guided and model.batches_trials:
        return _lowrank_pairs(model, base, seeds, x, y, hyper)
    if guided and hyper.search is not None and hyper.search.guided_alpha == 0 and model.arch == "mlp":
        return _subspace_mlp_costs(model, base, state, seeds, x, y, hyper)
    reference = mean_cost(model, model.forward(base, x), y)
    costs: list[float] = []
    norms = [gradient_norm(g) for g in state.history]
    for seed in seeds:
        ce = direction(seed, state, hyper, norms).mul_(c)
        n = len(ce)
        for sign in (1, -1):
            trial = base.clone()
            if sign > 0:
                trial[:n] -= ce
            else:
                trial[:n] += ce
            costs.append(mean_cost(model, model.forward(trial, x), y))
    return reference, costs


def _subspace_mlp_costs(model: Model, base: torch.Tensor, state: HybridState, seeds: list[int], x: torch.Tensor,
                        y: torch.Tensor, hyper: Hyper) -> tuple[float, list[float]]:
    """Guided trials with no isotropic part on the MLP: a trial is base - sum_j a_j g_j, so its first layer's
    product with the batch is the base's minus sum_j a_j times each gradient's, computed once per round
    (m + 1 products instead of one per trial); the later, small layers run per trial. The costs equal the
    dense trials' up to float rounding (they are only ranked; the step is rebuilt exactly by apply_es)."""
    assert hyper.search is not None
    m = len(state.history)
    scale = math.sqrt(hyper.num_weights / m)
    norms = [gradient_norm(g) for g in state.history]
    act = ACTIVATIONS[model.activation]
    xf = x.reshape(len(x), -1)
    pb = model.unflatten(base)
    pg = [model.unflatten(g) for g in state.history]
    h_base = F.linear(xf, pb["w0"], pb["b0"])
    h_grad = [F.linear(xf, p["w0"], p["b0"]) for p in pg]
    layers = len(model.weights)

    def rest(h: torch.Tensor, coef: list[float]) -> torch.Tensor:
        for i in range(1, layers):
            w, b = pb[f"w{i}"].clone(), pb[f"b{i}"].clone()
            for a, p in zip(coef, pg, strict=True):
                if a:
                    w -= a * p[f"w{i}"]
                    b -= a * p[f"b{i}"]
            h = F.linear(act(h), w, b)
        return h

    reference = mean_cost(model, rest(h_base, [0.0] * m), y)
    costs: list[float] = []
    c = hyper.shift_scale
    for seed in seeds:
        zeta = subspace_coefficients(seed, m).tolist()
        for sign in (1.0, -1.0):
            coef = [sign * c * scale * z / n if n > 0 else 0.0 for z, n in zip(zeta, norms, strict=True)]
            h = h_base.clone()
            for a, hg in zip(coef, h_grad, strict=True):
                h -= a * hg
            costs.append(mean_cost(model, rest(h, coef), y))
    return reference, costs


def _lowrank_pairs(model: Model, base: torch.Tensor, seeds: list[int], x: torch.Tensor, y: torch.Tensor,
                   hyper: Hyper) -> tuple[float, list[float]]:
    """Low-rank antithetic trials in one batched forward: slot 0 the base, then +A_i and -A_i per seed (the
    trial of factors (A, B) has weights W - c A B^T / sqrt(rank), so -A gives the + c E trial)."""
    slots = []
    for seed in seeds:
        f = lowrank_factors(seed, hyper.noise)
        slots += [(f, False), (f, True)]
    return batched_lowrank_costs(model, base, x, y, hyper, slots)


@torch.no_grad()
def apply_es(state: HybridState, decision: Decision, hyper: Hyper) -> HybridState:
    """theta' = base - c * sum_i w_i E_i, one seed at a time in the array's order (seeds of weight 0 skipped)."""
    assert decision.array is not None and hyper.search is not None
    out = trial_base(state, hyper).clone()
    weights = [float(w) for w in decision.array]
    norms = [gradient_norm(g) for g in state.history]
    for seed, w in zip(decision_seeds(hyper.search, decision.round, len(weights)), weights, strict=True):
        if w == 0.0:
            continue
        e = direction(seed, state, hyper, norms)
        e *= hyper.shift_scale * w  # two exactly rounded float32 operations: no fused multiply-add
        out[:len(e)] -= e
    return replace(state, version=decision.round + 1, theta=out)
