"""workers/search.py: antithetic trials, the es step on every replica to the bit, guided directions, zo, wire."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from workers.hybrid import apply_decision, batch_cost
from workers.messages import (
    Result,
    RoundKind,
    Status,
    Sync,
    Task,
    decode_result,
    decode_sync,
    decode_task,
    encode_result,
    encode_sync,
    encode_task,
)
from workers.models import mlp
from workers.replica import Replica, Schedule
from workers.search import apply_es, decision_seeds, direction, es_costs, gradient_norm, round_seeds
from workers.state import SHARED_WORKER, Decision, DecisionKind, HybridState, Hyper, Search
from workers.steps import descend, noise_spec


def setup(family: str = "gaussian", rule: str = "es", zo: bool = False, alpha: float = 0.5, m: int = 2,
          trials: str = "independent"):
    model = mlp(16, [8], "sigmoid", "fan_in")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 4, 4, generator=gen)
    y = torch.randint(0, 10, (40,), generator=gen)
    theta = torch.from_numpy(model.initial_parameters(1))
    grads = tuple(torch.randn(model.num_parameters, generator=gen) * 0.1 for _ in range(m))
    search = Search(rule, trials, 6, 123, zo, m, alpha)
    hyper = Hyper(lr=0.5, l2=1e-3, sigma=4.0, batch_size=40, num_weights=model.num_weights,
                  noise=noise_spec(model, family, 2), search=search)
    history = grads if rule == "guided" else ()
    state = HybridState(5, theta, None if zo else grads[-1], history)
    return model, state, hyper, x, y


@pytest.mark.parametrize("family,rule,alpha", [("gaussian", "es", 0.5), ("lowrank", "es", 0.5),
                                               ("gaussian", "guided", 0.5), ("gaussian", "guided", 0.0)])
def test_antithetic_costs_are_the_plus_and_minus_trials_in_order(family: str, rule: str, alpha: float) -> None:
    """alpha 0 takes the shared first-layer products (workers/search.py _subspace_mlp_costs): the same costs."""
    model, state, hyper, x, y = setup(family, rule, alpha=alpha)
    seeds = round_seeds(hyper.search, 5, 1)
    assert len(seeds) == 3  # k = 6: three seeds, each tried as +E and -E
    reference, costs = es_costs(model, state, seeds, x, y, hyper)
    base = descend(state.theta, state.grad, hyper)
    assert reference == pytest.approx(batch_cost(model, base, x, y), rel=1e-6)
    c = hyper.shift_scale
    for i, seed in enumerate(seeds):
        e = direction(seed, state, hyper)
        plus, minus = base.clone(), base.clone()
        plus[:len(e)] -= c * e
        minus[:len(e)] += c * e
        assert costs[2 * i] == pytest.approx(batch_cost(model, plus, x, y), rel=1e-5)
        assert costs[2 * i + 1] == pytest.approx(batch_cost(model, minus, x, y), rel=1e-5)
        assert costs[2 * i] != costs[2 * i + 1]


def test_the_es_step_moves_towards_the_better_sign() -> None:
    """A weight of +1 on one seed moves the parameters to the +E trial; -1 to the -E trial."""
    model, state, hyper, x, y = setup()
    seeds = decision_seeds(hyper.search, 5, 3)
    base = descend(state.theta, state.grad, hyper)
    e = direction(seeds[1], state, hyper)
    for w in (1.0, -1.0):
        out = apply_es(state, Decision(5, DecisionKind.ES, array=np.array([0, w, 0], np.float32)), hyper)
        expected = base.clone()
        expected[:len(e)] -= hyper.shift_scale * w * e
        torch.testing.assert_close(out.theta, expected)
        assert out.version == 6 and out.grad is state.grad


@pytest.mark.parametrize("family,rule", [("gaussian", "es"), ("lowrank", "es"), ("gaussian", "guided")])
def test_two_replicas_apply_the_same_es_step_to_the_bit(family: str, rule: str) -> None:
    model, state, hyper, x, y = setup(family, rule)
    weights = np.array([0.25, -0.5, 0.125, 0.0, 1.0 / 3, -0.2], np.float32)  # two workers x three seeds
    decision = Decision(5, DecisionKind.ES, array=weights)
    twin = HybridState(5, state.theta.clone(), state.grad.clone(), tuple(h.clone() for h in state.history))
    a, b = apply_decision(state, decision, hyper), apply_decision(twin, decision, hyper)
    assert a.theta.numpy().tobytes() == b.theta.numpy().tobytes()
    assert not torch.equal(a.theta, descend(state.theta, state.grad, hyper))


def test_decision_seeds_are_the_workers_round_seeds() -> None:
    search = Search("es", "independent", 6, 9)
    assert decision_seeds(search, 4, 6) == round_seeds(search, 4, 0) + round_seeds(search, 4, 1)
    shared = replace(search, trials="shared")
    assert round_seeds(shared, 4, 0) == round_seeds(shared, 4, 3) == decision_seeds(shared, 4, 3)
    assert round_seeds(shared, 4, 0) != round_seeds(shared, 5, 0)
    assert SHARED_WORKER > 1024  # above every worker slot (cluster.workers <= 1024)


def test_guided_directions_lie_in_the_gradients_span_when_alpha_is_zero() -> None:
    model, state, hyper, x, y = setup(rule="guided", alpha=0.0, m=3)
    e = direction(77, state, hyper).double()
    g = torch.stack(state.history).double().T  # (P, m)
    coef = torch.linalg.lstsq(g, e.unsqueeze(1)).solution
    torch.testing.assert_close(g @ coef, e.unsqueeze(1), rtol=1e-5, atol=1e-5)
    assert e.norm().item() > 0
    # isotropic only (alpha = 1): the seed's noise on the weights, nothing on the biases
    iso = replace(hyper, search=replace(hyper.search, guided_alpha=1.0))
    d = direction(77, state, iso)
    assert torch.equal(d[hyper.num_weights:], torch.zeros(len(d) - hyper.num_weights))


def test_gradient_norm_is_the_float64_norm() -> None:
    g = torch.tensor([3.0, 4.0, 0.0])
    assert gradient_norm(g) == 5.0


def test_guided_keeps_the_last_m_gradients_through_full_rounds() -> None:
    model, state, hyper, x, y = setup(rule="guided", m=2)
    st = HybridState(0, state.theta, None)
    grads = [np.full(model.num_parameters, float(i), np.float32) for i in range(3)]
    for i, g in enumerate(grads):
        st = apply_decision(st, Decision(i, DecisionKind.GRAD, array=g), hyper)
    assert [float(h[0]) for h in st.history] == [1.0, 2.0] and st.grad is st.history[-1]
    es_state = apply_decision(st, Decision(3, DecisionKind.ES, array=np.zeros(3, np.float32)), hyper)
    assert len(es_state.history) == 2  # a stochastic round keeps the history
    plain = replace(hyper, search=replace(hyper.search, rule="es"))
    assert apply_decision(st, Decision(3, DecisionKind.GRAD, array=grads[0]), plain).history == ()


def test_zo_searches_around_theta_and_its_first_round_needs_no_gradient() -> None:
    model, state, hyper, x, y = setup(zo=True)
    assert state.grad is None
    reference, costs = es_costs(model, state, round_seeds(hyper.search, 0, 0), x, y, hyper)
    assert reference == pytest.approx(batch_cost(model, state.theta, x, y), rel=1e-6) and len(costs) == 6
    out = apply_es(state, Decision(0, DecisionKind.ES, array=np.zeros(3, np.float32)), hyper)
    assert torch.equal(out.theta, state.theta)  # no weight, no step: zo applies no L2 decay either


def test_a_zo_replica_never_computes_a_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    model, state, hyper, x, y = setup(zo=True)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("zo called autograd")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    xs, ys = x.numpy(), y.numpy()
    schedule = Schedule("zo", 1, 20, len(xs), 3, True)
    rep = Replica(model, xs, ys, hyper, schedule, 123, 6, "es", 0, 1)
    rep.start(state.theta.numpy())
    decision = Decision(-1, DecisionKind.NONE)
    for t in range(4):
        assert schedule.kind(t) == RoundKind.STOCHASTIC
        r = rep.handle(Task(t, RoundKind.STOCHASTIC, decision))
        assert r.status == Status.OK and len(r.costs) == 6 and all(math.isfinite(c) for c in r.costs)
        assert all(p.grad is None for p in [rep.state.theta])
        decision = Decision(t, DecisionKind.ES, array=np.array([0.3, -0.1, 0.2], np.float32))
    assert rep.state.version == 3 and not torch.equal(rep.state.theta, state.theta)


def test_shared_trials_score_the_shard_and_report_examples() -> None:
    model, state, hyper, x, y = setup(rule="argmin", trials="shared")
    xs, ys = x.numpy(), y.numpy()
    schedule = Schedule("hybrid", 2, 20, len(xs), 3, True)
    reps = [Replica(model, xs, ys, hyper, schedule, 123, 6, "argmin", w, 2) for w in range(2)]
    for rep in reps:
        rep.sync(Sync(1, state.theta.numpy(), state.grad.numpy()))
    out = [rep.handle(Task(1, RoundKind.STOCHASTIC, Decision(0, DecisionKind.NONE))) for rep in reps]
    assert [r.examples for r in out] == [10, 10] and all(len(r.costs) == 6 for r in out)
    # the examples-weighted sum of the shard costs is the cost on the whole minibatch
    base = descend(state.theta, state.grad, hyper)
    idx = torch.tensor(schedule.batch(1))
    seed = round_seeds(hyper.search, 1, 0)[2]
    from workers.steps import noise, shift
    whole = batch_cost(model, shift(base, noise(seed, hyper, base.device), hyper), x[idx], y[idx])
    assert (out[0].costs[2] * 10 + out[1].costs[2] * 10) / 20 == pytest.approx(whole, rel=1e-5)


def test_costs_results_es_decisions_and_history_syncs_round_trip() -> None:
    r = Result(7, 3, improvements=4, examples=500, costs=(0.5, 0.25, 0.125, 1.0))
    head, array, dig = encode_result(r, RoundKind.STOCHASTIC)
    assert len(head) == 7 + 8 + 4 * 4 and array is None
    assert decode_result(head, array, dig, RoundKind.STOCHASTIC) == r
    weights = np.array([0.5, -0.25, 0.0], np.float32)
    task = Task(8, RoundKind.STOCHASTIC, Decision(7, DecisionKind.ES, array=weights))
    header, decision = encode_task(task)
    assert len(decision) == 1 + 4 * 3
    back = decode_task(header, decision)
    assert back.decision.kind == DecisionKind.ES and back.decision.array.tolist() == weights.tolist()
    theta, grad = np.arange(4, dtype=np.float32), np.ones(4, np.float32)
    hist = (np.full(4, 2.0, np.float32), grad)
    s = decode_sync(encode_sync(Sync(9, theta, grad, (0, 1), hist)))
    assert s.version == 9 and s.members == (0, 1) and s.theta.tolist() == theta.tolist()
    assert s.grad.tolist() == grad.tolist() and [h.tolist() for h in s.history] == [h.tolist() for h in hist]
    plain = decode_sync(encode_sync(Sync(9, theta, None)))
    assert plain.grad is None and plain.history == ()
