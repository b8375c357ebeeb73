"""The Hybrid-ES update: trials keep the argmin, decisions rebuild exactly what was evaluated, notebook rule."""
from __future__ import annotations

import math

import numpy as np
import torch

from workers.hybrid import apply_decision, batch_cost, batch_loss_and_grad_sum, run_trials
from workers.models import mlp
from workers.state import Decision, DecisionKind, HybridState, Hyper
from workers.steps import descend, noise, shift


def setup(sigma: float = 1.0, lr: float = 0.5):
    model = mlp(16, [8], "sigmoid", "fan_in")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 4, 4, generator=gen)
    y = torch.randint(0, 10, (40,), generator=gen)
    theta = torch.from_numpy(model.initial_parameters(1))
    grad = torch.randn(model.num_parameters, generator=gen) * 0.1
    hyper = Hyper(lr=lr, l2=1e-3, sigma=sigma, batch_size=40, num_weights=model.num_weights)
    return model, HybridState(5, theta, grad), hyper, x, y


def test_descend_applies_l2_to_weights_only() -> None:
    theta = torch.ones(6)
    hyper = Hyper(lr=0.5, l2=0.1, sigma=0, batch_size=1, num_weights=4)
    out = descend(theta, torch.zeros(6), hyper)
    assert torch.allclose(out[:4], torch.full((4,), 1 - 2 * 0.5 * 0.1))
    assert torch.equal(out[4:], torch.ones(2))


def test_trials_pick_the_argmin() -> None:
    model, state, hyper, x, y = setup(sigma=20.0)
    seeds = [11, 22, 33, 44, 55, 66]
    out = run_trials(model, state, seeds, x, y, hyper)
    base = descend(state.theta, state.grad, hyper)
    costs = [batch_cost(model, shift(base, noise(s, hyper, base.device), hyper), x, y) for s in seeds]
    assert out.seed == seeds[int(np.argmin(costs))]
    assert out.cost == min(costs)
    assert len(set(costs)) == len(costs)  # the shifts differ
    assert out.improvements == sum(c < batch_cost(model, base, x, y) for c in costs)


def test_seed_decision_rebuilds_the_evaluated_trial() -> None:
    model, state, hyper, x, y = setup(sigma=20.0)
    out = run_trials(model, state, [5, 6, 7], x, y, hyper)
    after = apply_decision(state, Decision(5, DecisionKind.SEED, seed=out.seed), hyper)
    assert after.version == 6
    assert batch_cost(model, after.theta, x, y) == out.cost
    # Algorithm 2: the gradient later stochastic rounds shift stays the last backprop gradient, so at r >= 3
    # the shifts do not accumulate; biases are never shifted
    assert torch.equal(after.grad, state.grad)
    assert torch.equal(after.theta[hyper.num_weights:], descend(state.theta, state.grad, hyper)[hyper.num_weights:])
    z = noise(out.seed, hyper, torch.device("cpu"))
    expected = descend(state.theta, state.grad, hyper)[: hyper.num_weights] - hyper.shift_scale * z
    assert torch.allclose(after.theta[: hyper.num_weights], expected)


def test_consecutive_stochastic_rounds_shift_the_same_backprop_gradient() -> None:
    model, state, hyper, x, y = setup(sigma=20.0)
    once = apply_decision(state, Decision(5, DecisionKind.SEED, seed=7), hyper)
    twice = apply_decision(once, Decision(6, DecisionKind.SEED, seed=8), hyper)
    z7, z8 = (noise(s, hyper, torch.device("cpu")) for s in (7, 8))
    by_hand = shift(descend(shift(descend(state.theta, state.grad, hyper), z7, hyper), state.grad, hyper), z8, hyper)
    assert torch.equal(twice.theta, by_hand) and torch.equal(twice.grad, state.grad)


def test_comparing_with_the_current_cost_as_the_notebook_did() -> None:
    for lr, sigma in ((1e-6, 1.0), (0.5, 1.0), (50.0, 1e3)):  # tiny, ordinary and wild steps
        model, state, hyper, x, y = setup(sigma=sigma, lr=lr)
        out = run_trials(model, state, [1, 2, 3, 4], x, y, hyper, compare_current=True)
        assert out.beats_current == (out.cost < batch_cost(model, state.theta, x, y))
        assert out.reference_cost == batch_cost(model, descend(state.theta, state.grad, hyper), x, y)
        assert not run_trials(model, state, [1, 2, 3, 4], x, y, hyper).beats_current  # not asked: not computed
    # along the true gradient an ordinary step beats the current cost; a wild one does not
    model, state, hyper, x, y = setup(sigma=0.1, lr=0.5)
    _, grad_sum = batch_loss_and_grad_sum(model, state.theta, x, y)
    state = HybridState(state.version, state.theta, grad_sum / len(y))
    assert run_trials(model, state, [1, 2, 3, 4], x, y, hyper, compare_current=True).beats_current
    model, state, hyper, x, y = setup(sigma=1e3, lr=50.0)
    assert not run_trials(model, state, [1, 2, 3, 4], x, y, hyper, compare_current=True).beats_current


def test_notebook_decisions() -> None:
    _, state, hyper, _, _ = setup()
    stale = apply_decision(state, Decision(5, DecisionKind.STALE), hyper)
    assert torch.equal(stale.theta, descend(state.theta, state.grad, hyper))
    assert torch.equal(stale.grad, state.grad)
    bias_only = apply_decision(state, Decision(5, DecisionKind.BIAS_ONLY), hyper)
    nw = hyper.num_weights
    assert torch.equal(bias_only.theta[:nw], state.theta[:nw])  # weights left unchanged
    assert torch.allclose(bias_only.theta[nw:], state.theta[nw:] - hyper.lr * state.grad[nw:])


def test_full_decision_and_params_decision() -> None:
    _, state, hyper, _, _ = setup()
    g = np.full(state.theta.shape, 0.01, dtype=np.float32)
    after = apply_decision(state, Decision(5, DecisionKind.GRAD, array=g), hyper)
    assert torch.equal(after.grad, torch.from_numpy(g))
    assert torch.equal(after.theta, descend(state.theta, torch.from_numpy(g), hyper))
    p = np.zeros(state.theta.shape, dtype=np.float32)
    assert float(apply_decision(state, Decision(5, DecisionKind.PARAMS, array=p), hyper).theta.abs().sum()) == 0


def test_nan_costs_never_win() -> None:
    model, state, hyper, x, y = setup(sigma=1e30)
    out = run_trials(model, state, [1, 2], x, y, hyper)
    assert out.improvements == 0 and (math.isinf(out.cost) or math.isfinite(out.cost))


def test_keep_decision_moves_nothing() -> None:
    _, state, hyper, _, _ = setup()
    kept = apply_decision(state, Decision(5, DecisionKind.KEEP), hyper)
    assert kept.version == 6 and torch.equal(kept.theta, state.theta) and torch.equal(kept.grad, state.grad)
