"""Low-rank trials: a pure function of the seed, unit variance, the batched engine equal to dense trials."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from workers.data import load_dataset
from workers.hybrid import apply_decision, batch_cost, run_trials
from workers.messages import RoundKind, Task
from workers.models import Model, convnet, mlp
from workers.noise import NoiseSpec, lowrank_dense, lowrank_factors, perturbation
from workers.replica import Replica, Schedule
from workers.state import Decision, DecisionKind, HybridState, Hyper
from workers.steps import descend, noise, noise_spec, shift

PAPER = NoiseSpec("lowrank", 1, mlp(784, [300]).matrices)  # (300, 784), (10, 300)
SNIPPET = ("import hashlib,sys; from workers.noise import NoiseSpec, lowrank_dense; "
           "spec = NoiseSpec('lowrank', 3, ((300, 784), (10, 300), (6, 25))); "
           "sys.stdout.write(hashlib.sha256(lowrank_dense(987654321, spec).numpy().tobytes()).hexdigest())")


def test_a_pure_function_of_the_seed_in_this_process_and_another() -> None:
    spec = NoiseSpec("lowrank", 3, ((300, 784), (10, 300), (6, 25)))
    first, again = lowrank_dense(987654321, spec), lowrank_dense(987654321, spec)
    assert first.dtype == torch.float32 and first.shape == (300 * 784 + 10 * 300 + 6 * 25,)
    assert torch.equal(first, again)
    assert not torch.equal(first, lowrank_dense(987654322, spec))
    there = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True).stdout
    assert hashlib.sha256(first.numpy().tobytes()).hexdigest() == there


def test_factors_come_from_one_perturbation_stream_in_the_documented_order() -> None:
    spec = NoiseSpec("lowrank", 2, ((3, 4), (5, 3)))
    z = perturbation(11, spec.draws)
    assert spec.draws == (3 + 4) * 2 + (5 + 3) * 2
    (a0, b0), (a1, b1) = lowrank_factors(11, spec)
    assert np.array_equal(a0.numpy(), z[:6].reshape(3, 2)) and np.array_equal(b0.numpy(), z[6:14].reshape(4, 2))
    assert np.array_equal(a1.numpy(), z[14:24].reshape(5, 2)) and np.array_equal(b1.numpy(), z[24:].reshape(3, 2))
    e = lowrank_dense(11, spec)
    assert torch.allclose(e[:12].view(3, 4), a0 @ b0.T / math.sqrt(2), atol=1e-6)
    assert torch.allclose(e[12:].view(5, 3), a1 @ b1.T / math.sqrt(2), atol=1e-6)


@pytest.mark.parametrize("rank", [1, 4])
def test_every_entry_has_unit_variance(rank: int) -> None:
    spec = replace(PAPER, rank=rank)
    draws = torch.stack([lowrank_dense(seed, spec) for seed in range(1000, 1040)])  # 40 seeds, fixed
    per_entry = draws[:, ::997]  # a spread of entries of both matrices, each over the 40 seeds
    assert abs(float(draws.mean())) < 0.05
    assert abs(float(draws.var()) - 1) < 0.1  # over all entries and seeds
    assert abs(float(per_entry.var(dim=0).mean()) - 1) < 0.1  # entry by entry, averaged


def setup(model: Model, n: int, rank: int, sigma: float = 30.0) -> tuple[HybridState, Hyper, torch.Tensor,
                                                                        torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    side = 28 if model.arch == "convnet" else int(math.isqrt(model.weights[0].shape[1]))
    x = torch.randn(n, 1, side, side, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    theta = torch.from_numpy(model.initial_parameters(1))
    grad = torch.randn(model.num_parameters, generator=gen) * 0.01
    hyper = Hyper(lr=0.5, l2=1e-3, sigma=sigma, batch_size=n, num_weights=model.num_weights,
                  noise=noise_spec(model, "lowrank", rank))
    return HybridState(4, theta, grad), hyper, x, y


@pytest.mark.parametrize("arch,rank", [("mlp", 1), ("mlp", 3), ("mlp2", 2), ("convnet", 1), ("convnet", 2)])
def test_batched_costs_equal_the_dense_trials(arch: str, rank: int) -> None:
    model = {"mlp": mlp(64, [32]), "mlp2": mlp(64, [32, 16], "tanh"), "convnet": convnet(28)}[arch]
    state, hyper, x, y = setup(model, 60, rank)
    assert state.grad is not None
    seeds = [101, 202, 303, 404, 505, 606]
    out = run_trials(model, state, seeds, x, y, hyper, compare_current=True)
    base = descend(state.theta, state.grad, hyper)
    dense = [batch_cost(model, shift(base, noise(s, hyper, base.device), hyper), x, y) for s in seeds]
    reference = batch_cost(model, base, x, y)
    assert len(set(dense)) == len(dense)  # the trials differ
    assert out.seed == seeds[int(np.argmin(dense))]
    assert math.isclose(out.cost, min(dense), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(out.reference_cost, reference, rel_tol=1e-5, abs_tol=1e-6)
    assert out.improvements == sum(c < reference for c in dense)
    assert out.beats_current == (min(dense) < batch_cost(model, state.theta, x, y))


def test_the_chosen_seed_rebuilds_the_low_rank_trial() -> None:
    model = mlp(64, [32])
    state, hyper, x, y = setup(model, 60, 2)
    assert state.grad is not None
    after = apply_decision(state, Decision(4, DecisionKind.SEED, seed=77), hyper)
    nw = model.num_weights
    e = lowrank_dense(77, hyper.noise)
    assert torch.equal(after.theta, shift(descend(state.theta, state.grad, hyper), e, hyper))
    assert torch.equal(after.theta[nw:], descend(state.theta, state.grad, hyper)[nw:])  # biases not shifted
    assert torch.equal(after.grad, state.grad)


def test_replicas_with_lowrank_stay_bitwise_equal() -> None:
    data = load_dataset("synthetic", None, None, 3)
    model = convnet(data.image_side)
    hyper = Hyper(lr=0.1, l2=1e-4, sigma=1.0, batch_size=40, num_weights=model.num_weights,
                  noise=noise_spec(model, "lowrank", 2))
    schedule = Schedule("hybrid", 3, 40, len(data.x_train), seed=3, shuffle=True)
    reps = [Replica(model, data.x_train, data.y_train, hyper, schedule, 3, 4, "argmin", w, 2) for w in (0, 1)]
    for rep in reps:
        rep.start(model.initial_parameters(3))
    decision = Decision(-1, DecisionKind.NONE)
    for t in range(7):
        results = [rep.handle(Task(t, schedule.kind(t), decision)) for rep in reps]
        if schedule.kind(t) == RoundKind.FULL:
            grad = (sum(r.array for r in results) / sum(r.examples for r in results)).astype("float32")  # type: ignore[misc]
            decision = Decision(t, DecisionKind.GRAD, array=grad)
        else:
            best = min(results, key=lambda r: (r.cost, r.worker))
            decision = Decision(t, DecisionKind.SEED, seed=best.seed)
    for rep in reps:
        rep.handle(Task(7, RoundKind.APPLY, decision))
    a, b = (rep.state for rep in reps)
    assert a is not None and b is not None and a.version == b.version == 7
    assert torch.equal(a.theta, b.theta)


def test_gaussian_trials_unchanged_across_slices() -> None:
    """Over CHUNK weights the gaussian trial's step is recomputed in slices: still bitwise the dense trial."""
    model = mlp(784, [100])  # 79,400 weights: two slices
    state, hyper, x, y = setup(model, 50, 1, sigma=5.0)
    hyper = replace(hyper, noise=NoiseSpec())
    assert state.grad is not None
    seeds = [1, 2, 3, 4]
    out = run_trials(model, state, seeds, x, y, hyper)
    base = descend(state.theta, state.grad, hyper)
    trials = [shift(base, noise(s, hyper, base.device), hyper) for s in seeds]
    dense = [batch_cost(model, t, x, y) for t in trials]
    best = int(np.argmin(dense))
    assert out.seed == seeds[best] and out.cost == dense[best]
    assert out.reference_cost == batch_cost(model, base, x, y)
    rebuilt = apply_decision(state, Decision(state.version, DecisionKind.SEED, seed=out.seed), hyper)
    assert torch.equal(rebuilt.theta, trials[best])  # the winner's parameters, rebuilt from its seed


@pytest.mark.parametrize("model", [mlp(64, [32, 16], "relu"), convnet(28)], ids=["mlp", "convnet"])
def test_forward_trials_equals_dense_forwards(model: Model) -> None:
    """The batched forward (which the engine uses for the MLP; the ConvNet's trials go one at a time) gives each
    trial's logits, and the zero-factor slot the unperturbed ones."""
    state, hyper, x, y = setup(model, 20, 2)
    seeds = [3, 4, 5]
    drawn = [lowrank_factors(s, hyper.noise) for s in seeds]
    factors = [(torch.stack([torch.zeros(rows, 2), *(f[i][0] for f in drawn)]),
                torch.stack([torch.zeros(cols, 2), *(f[i][1] for f in drawn)]))
               for i, (rows, cols) in enumerate(hyper.noise.matrices)]
    with torch.no_grad():
        logits = model.forward_trials(state.theta, x, factors, hyper.shift_scale / math.sqrt(2))
        dense = [model.forward(state.theta, x)] + [model.forward(shift(state.theta, lowrank_dense(s, hyper.noise),
                                                                       hyper), x) for s in seeds]
    assert logits.shape == (4, 20, 10)
    for got, want in zip(logits, dense, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))  # float32 sums, reordered
