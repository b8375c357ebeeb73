"""The Hybrid-ES update as pure functions over a frozen state (no Ray, no FastAPI).

The types it works on (Hyper, HybridState, Decision) live in workers/state.py, the steps it shares with
workers/search.py (descend, a seed's noise, shift, a trial's cost) in workers/steps.py.

Units (see seed/NOTES.md): `grad` is the batch-MEAN gradient of the loss (`Model.loss`). The paper's code adds
sigma * z to the batch-SUMMED weight gradient and multiplies by lr / B, so a trial is
    theta_k = descend(theta, grad) - lr * (sigma / B) * z_k        on the weights, biases untouched,
    descend(theta, g) = theta - lr * g - 2 * lr * l2 * theta       (the L2 term on the weights only).
With B = 1000, lr = 5, sigma = 1.25 a trial moves each weight by 5 * 1.25 / 1000 = 0.00625 std.

Every replica applies a round's `Decision` with `apply_decision`, so the coordinator and the workers
hold bitwise-identical parameters without ever sending them on a stochastic round.

How a round's K trials are evaluated depends on the noise family (`Hyper.noise`, config `hybrid.noise`):
- gaussian: one trial at a time, in a buffer of its own: the seed's noise is drawn into it and turned in place
  into the trial's weights (the step descend(theta, grad) recomputed in chunks beside it), so a round holds one
  trial's weights besides theta and grad; the arithmetic is the one `shift(descend(...))` does, so costs and
  parameters are bitwise those of a dense trial. The winner's parameters are not kept: every replica, the
  winner's too, rebuilds them from the seed (`apply_decision`), so the round needs no second buffer.
- lowrank: all K trials (and the unperturbed step) at once, `Model.forward_trials`: the first layer's product
  with the batch once, every trial's low-rank correction batched (the ConvNet: one dense trial at a time,
  see `Model.batches_trials`).

The gradient that stochastic rounds shift is the last BACKPROP gradient (Algorithm 2: dθ is assigned by
backprop only, and every stochastic round draws N(0, σ²) around it anew). Applying a chosen seed moves the
parameters, not that gradient, so at r >= 3 the shifts of consecutive stochastic rounds do not pile up
into a random walk of the gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from workers.models import Model
from workers.noise import lowrank_factors, perturbation_on
from workers.search import apply_es
from workers.state import Decision, DecisionKind, HybridState, Hyper, cost_rank
from workers.steps import batched_lowrank_costs, descend, keep_frozen, mean_cost, noise, shift

CHUNK = 1 << 16  # elements per slice when a gaussian trial's step is recomputed beside it: bounds that scratch buffer


def batch_loss_and_grad_sum(model: Model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                            frozen: tuple[int, int] = (0, 0)) -> tuple[float, torch.Tensor]:
    """(summed loss, gradient of the summed loss) over a batch (`model.loss`, cross-entropy unless
    train.loss says otherwise); grad (P,) float32.

    With frozen parts (Hyper.frozen) only the trainable slices are leaves: the layers before them run without a
    graph, so the backward keeps the last layer's input, not every layer's activations (a forward pass's memory
    plus the last layer's), and the frozen entries of the gradient are zero."""
    if frozen == (0, 0):
        leaf = theta.detach().requires_grad_(True)
        loss = model.loss.total(model.forward(leaf, x), y)
        (grad,) = torch.autograd.grad(loss, leaf)
        return float(loss.detach()), grad
    fw, fb = frozen
    nw = model.num_weights
    weights = theta[fw:nw].detach().requires_grad_(True)
    biases = theta[nw + fb:].detach().requires_grad_(True)
    whole = torch.cat([theta[:fw].detach(), weights, theta[nw:nw + fb].detach(), biases])
    loss = model.loss.total(model.forward(whole, x), y)
    g_weights, g_biases = torch.autograd.grad(loss, [weights, biases])
    grad = torch.zeros_like(theta)
    grad[fw:nw], grad[nw + fb:] = g_weights, g_biases
    return float(loss.detach()), grad


@torch.no_grad()
def batch_cost(model: Model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean loss of theta on a batch, rounded to float32 as it travels (4 bytes)."""
    return mean_cost(model, model.forward(theta, x), y)


@dataclass(frozen=True)
class TrialOutcome:
    seed: int  # the best trial's seed
    cost: float  # its cost (float32 value)
    improvements: int  # trials whose cost beat the unperturbed step's (the paper's Fig. 14)
    reference_cost: float  # the unperturbed step's cost: descend(theta, grad)
    beats_current: bool = False  # the best trial beat theta's own cost (asked for by notebook and elitist)


@torch.no_grad()
def run_trials(model: Model, state: HybridState, seeds: list[int], x: torch.Tensor, y: torch.Tensor,
               hyper: Hyper, compare_current: bool = False) -> TrialOutcome:
    """Evaluate K seeded trials around `state` on one batch and keep the best (lowest cost, then first).

    Improvements count the trials that beat the unperturbed step descend(theta, grad). With
    `compare_current` (one more forward pass) it also tells whether the best trial beat the cost of theta
    itself, which is what the paper's notebook compared with (NOTES.md) and what elitist selection needs.
    """
    if state.grad is None:
        raise ValueError("a stochastic round needs a gradient: the first round of a job must be full")
    if hyper.noise.family == "lowrank":
        reference_cost, costs = _lowrank_costs(model, state.theta, state.grad, seeds, x, y, hyper)
    else:
        reference_cost, costs = _gaussian_costs(model, state.theta, state.grad, seeds, x, y, hyper)
    # The first of the lowest costs. A nan or inf cost loses to every finite one but is reported as it is: when
    # no trial of the round is finite, the coordinator ends the job as diverged (coordinator/rounds.py).
    best = min(range(len(seeds)), key=lambda i: cost_rank(costs[i]))
    improvements = sum(cost < reference_cost for cost in costs)
    beats_current = compare_current and costs[best] < batch_cost(model, state.theta, x, y)
    return TrialOutcome(seeds[best], costs[best], improvements, reference_cost, beats_current)


def _step_biases(theta: torch.Tensor, grad: torch.Tensor, hyper: Hyper) -> torch.Tensor:
    """The biases of descend(theta, grad): no L2 on them, the same arithmetic, to the bit."""
    nw, fb = hyper.num_weights, hyper.frozen[1]
    out = theta[nw:] - hyper.lr * grad[nw:]
    if fb:
        out[:fb] = theta[nw:nw + fb]
    return out


def _trial_weights(z: torch.Tensor, theta: torch.Tensor, grad: torch.Tensor, hyper: Hyper) -> torch.Tensor:
    """z (num_weights,), the seed's noise, becomes in place the trial's weights descend(theta, grad) - lr*sigma/B*z.

    The step is recomputed in slices of CHUNK beside z instead of held whole; every operation is the
    elementwise one `descend` and `shift` do, so the result is theirs to the bit."""
    z.mul_(hyper.shift_scale)
    decay = 2.0 * hyper.lr * hyper.l2
    for lo in range(0, hyper.num_weights, CHUNK):
        hi = min(lo + CHUNK, hyper.num_weights)
        step = theta[lo:hi] - hyper.lr * grad[lo:hi]
        if hyper.l2:
            step -= decay * theta[lo:hi]
        torch.sub(step, z[lo:hi], out=z[lo:hi])
    if hyper.frozen[0]:
        z[:hyper.frozen[0]] = theta[:hyper.frozen[0]]  # descend keeps them; their noise is zero
    return z


def _gaussian_costs(model: Model, theta: torch.Tensor, grad: torch.Tensor, seeds: list[int], x: torch.Tensor,
                    y: torch.Tensor, hyper: Hyper) -> tuple[float, list[float]]:
    """(the unperturbed step's cost, each trial's cost), one trial at a time in one buffer besides theta and grad."""
    biases = _step_biases(theta, grad, hyper)
    weights = _trial_weights(torch.zeros_like(theta[:hyper.num_weights]), theta, grad, hyper)  # step - 0 = step
    reference_cost = mean_cost(model, model.forward_parts(weights, biases, x), y)
    costs: list[float] = []
    for seed in seeds:
        perturbation_on(seed, hyper.num_weights, theta.device, out=weights)  # the last trial's buffer, reused
        costs.append(mean_cost(model, model.forward_parts(_trial_weights(weights, theta, grad, hyper), biases, x), y))
    return reference_cost, costs


def _lowrank_costs(model: Model, theta: torch.Tensor, grad: torch.Tensor, seeds: list[int], x: torch.Tensor,
                   y: torch.Tensor, hyper: Hyper) -> tuple[float, list[float]]:
    """(the unperturbed step's cost, each trial's cost), all K trials in one batched forward.

    The step is slot 0 of the batch (zero factors), the trials slots 1..K; their weights are
    step - lr*sigma/B * A B^T / sqrt(rank), never built. A model that does not batch its trials
    (`Model.batches_trials`) evaluates them one dense forward at a time."""
    spec = hyper.noise
    if not model.batches_trials:
        base = descend(theta, grad, hyper)
        return batch_cost(model, base, x, y), [batch_cost(model, shift(base, noise(seed, hyper, base.device), hyper),
                                                          x, y) for seed in seeds]
    drawn = [lowrank_factors(seed, spec) for seed in seeds]
    return batched_lowrank_costs(model, descend(theta, grad, hyper), x, y, hyper, [(f, False) for f in drawn])


@torch.no_grad()
def apply_decision(state: HybridState, decision: Decision, hyper: Hyper) -> HybridState:
    """The next state after `decision`; the same arithmetic on every replica."""
    kind = decision.kind
    if kind == DecisionKind.NONE:
        return state
    if kind in (DecisionKind.LOCAL, DecisionKind.KEEP):
        return replace(state, version=decision.round + 1)
    version = decision.round + 1
    if kind == DecisionKind.GRAD:
        assert decision.array is not None
        grad = torch.from_numpy(decision.array).to(state.theta.device)
        return HybridState(version, descend(state.theta, grad, hyper), grad, _remember(state, grad, hyper))
    if kind == DecisionKind.SET_GRAD:
        assert decision.array is not None
        grad = torch.from_numpy(decision.array).to(state.theta.device)
        return HybridState(version, state.theta, grad, _remember(state, grad, hyper))
    if kind == DecisionKind.PARAMS:
        assert decision.array is not None
        theta = torch.from_numpy(np.array(decision.array, copy=True)).to(state.theta.device)
        return replace(state, version=version, theta=keep_frozen(theta, state.theta, hyper))  # an average's rounding
    if kind == DecisionKind.ES:
        return apply_es(state, decision, hyper)
    if state.grad is None:
        raise ValueError(f"decision {kind.name} of round {decision.round} needs a gradient")
    if kind == DecisionKind.SEED:
        z = noise(decision.seed, hyper, state.theta.device)
        return replace(state, version=version, theta=shift(descend(state.theta, state.grad, hyper), z, hyper))
    if kind == DecisionKind.STALE:
        return replace(state, version=version, theta=descend(state.theta, state.grad, hyper))
    if kind == DecisionKind.BIAS_ONLY:
        theta = state.theta.clone()
        at = hyper.num_weights + hyper.frozen[1]
        theta[at:] -= hyper.lr * state.grad[at:]
        return replace(state, version=version, theta=theta)
    raise ValueError(f"unknown decision kind {kind}")


def _remember(state: HybridState, grad: torch.Tensor, hyper: Hyper) -> tuple[torch.Tensor, ...]:
    """The gradient history after a full round: guided keeps the last guided_m gradients, other rules none."""
    m = hyper.search.history_m if hyper.search is not None else 0
    return (*state.history, grad)[-m:] if m else ()


def trial_costs(model: Model, state: HybridState, seeds: list[int], x: torch.Tensor, y: torch.Tensor,
                hyper: Hyper) -> tuple[float, list[float]]:
    """(the unperturbed step's cost, every trial's cost): run_trials' trials, all costs kept (shared argmin)."""
    if state.grad is None:
        raise ValueError("a stochastic round needs a gradient: the first round of a job must be full")
    if hyper.noise.family == "lowrank":
        return _lowrank_costs(model, state.theta, state.grad, seeds, x, y, hyper)
    return _gaussian_costs(model, state.theta, state.grad, seeds, x, y, hyper)


def local_step(model: Model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               hyper: Hyper) -> tuple[float, torch.Tensor]:
    """One plain SGD step on a worker's own shard (localsgd); returns (summed loss, new theta)."""
    loss_sum, grad_sum = batch_loss_and_grad_sum(model, theta, x, y, hyper.frozen)
    return loss_sum, descend(theta, grad_sum / len(x), hyper)


@torch.no_grad()
def evaluate(model: Model, theta: torch.Tensor, x: np.ndarray, y: np.ndarray,
             chunk: int = 5000) -> tuple[float, float | None]:
    """(mean loss, accuracy as a fraction) over a whole split, in chunks; accuracy None for a regression
    (train.loss mse), over every position for sequences."""
    if len(x) == 0:
        return float("nan"), float("nan") if model.loss.classification else None
    total_loss, correct, labels = 0.0, 0, 0
    for at in range(0, len(x), chunk):
        xb = torch.from_numpy(x[at:at + chunk]).to(theta.device)
        yb = torch.from_numpy(y[at:at + chunk]).to(theta.device)
        logits = model.forward(theta, xb)
        total_loss += float(model.loss.total(logits, yb))
        right, count = model.loss.correct(logits, yb)
        correct, labels = correct + right, labels + count
    return total_loss / len(x), correct / labels if model.loss.classification else None
