"""A worker's replica without Ray: applying a decision, and reusing its own winning trial."""
from __future__ import annotations

import pytest
import torch

import workers.hybrid as hybrid
from workers.data import load_dataset
from workers.messages import RoundKind, Sync, Task
from workers.models import build_model
from workers.replica import Replica, Schedule
from workers.state import Decision, DecisionKind, HybridState, Hyper


def two_replicas() -> tuple[Replica, Replica, Schedule]:
    data = load_dataset("synthetic", None, None, 3)
    model = build_model("mlp", [8], "sigmoid", "normal", data.image_side)
    hyper = Hyper(lr=0.5, l2=1e-4, sigma=5.0, batch_size=20, num_weights=model.num_weights)
    schedule = Schedule("hybrid", 4, 20, len(data.x_train), seed=3, shuffle=True)
    make = lambda worker: Replica(model, data.x_train, data.y_train, hyper, schedule, 3, 5, "argmin",  # noqa: E731
                                  worker, 2)
    a, b = make(0), make(1)
    theta0 = model.initial_parameters(3)
    for rep in (a, b):
        rep.start(theta0)
    return a, b, schedule


def test_every_replica_rebuilds_the_winner_bitwise_from_its_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _ = two_replicas()
    full = [rep.handle(Task(0, RoundKind.FULL, Decision(-1, DecisionKind.NONE))) for rep in (a, b)]
    grad = (sum(r.array for r in full) / sum(r.examples for r in full)).astype("float32")  # type: ignore[misc]
    results = [rep.handle(Task(1, RoundKind.STOCHASTIC, Decision(0, DecisionKind.GRAD, array=grad)))
               for rep in (a, b)]
    winner = min(results, key=lambda r: (r.cost, r.worker))
    drawn = []
    real_noise = hybrid.noise
    monkeypatch.setattr(hybrid, "noise", lambda seed, *rest: drawn.append(seed) or real_noise(seed, *rest))
    chosen = Decision(1, DecisionKind.SEED, seed=winner.seed)
    for rep in (a, b):
        rep.handle(Task(2, RoundKind.APPLY, chosen))
    assert drawn == [winner.seed, winner.seed]  # the winner too: no replica keeps a trial's parameters
    assert a.state is not None and b.state is not None
    assert a.state.version == b.state.version == 2
    assert torch.equal(a.state.theta, b.state.theta) and torch.equal(a.state.grad, b.state.grad)


def after_trials() -> tuple[Replica, HybridState, int]:
    """A replica that ran a full round and then round 1's trials: (it, its state, its best seed)."""
    a, _, _ = two_replicas()
    full = a.handle(Task(0, RoundKind.FULL, Decision(-1, DecisionKind.NONE)))
    grad = (full.array / full.examples).astype("float32")  # type: ignore[operator]
    out = a.handle(Task(1, RoundKind.STOCHASTIC, Decision(0, DecisionKind.GRAD, array=grad)))
    assert a.state is not None
    return a, a.state, out.seed


def test_another_workers_seed_is_rebuilt() -> None:
    a, before, best = after_trials()
    other = Decision(1, DecisionKind.SEED, seed=best + 1)  # another worker's trial won
    a.handle(Task(2, RoundKind.APPLY, other))
    assert a.state is not None
    assert torch.equal(a.state.theta, hybrid.apply_decision(before, other, a.hyper).theta)


def test_a_seed_after_a_sync_is_applied_to_the_synced_state() -> None:
    a, before, best = after_trials()
    assert before.grad is not None
    a.sync(Sync(before.version, before.theta.numpy() + 1, before.grad.numpy()))
    mine = Decision(1, DecisionKind.SEED, seed=best)
    a.handle(Task(2, RoundKind.APPLY, mine))
    expected = hybrid.apply_decision(HybridState(1, before.theta + 1, before.grad), mine, a.hyper)
    assert a.state is not None
    assert torch.equal(a.state.theta, expected.theta)
