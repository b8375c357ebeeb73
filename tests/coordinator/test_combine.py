"""coordinator/combine.py: every rule driven by hand-made results, no pool, no Ray."""
from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.combine import Rules, combine, es_weights, round_loss, shared_costs
from workers.messages import Result, RoundKind
from workers.noise import trial_seed
from workers.search import subspace_coefficients
from workers.state import SHARED_WORKER, DecisionKind

NAN = float("nan")


def stochastic(worker: int, seed: int, cost: float, beats: bool = False) -> Result:
    return Result(3, worker, seed=seed, cost=cost, beats_current=beats)


def test_full_round_averages_the_summed_gradients_and_assisted_only_sets_them() -> None:
    results = [Result(0, 0, examples=3, array=np.array([3.0, 6.0], np.float32)),
               Result(0, 1, examples=1, array=np.array([1.0, 2.0], np.float32))]
    d = combine(0, RoundKind.FULL, results, Rules())
    assert d.kind == DecisionKind.GRAD and d.round == 0
    np.testing.assert_array_equal(d.array, np.array([1.0, 2.0], np.float32))  # (3 + 1) / 4, (6 + 2) / 4
    assert combine(0, RoundKind.FULL, results, Rules(assisted=True)).kind == DecisionKind.SET_GRAD


def test_average_weighs_parameters_by_examples_and_local_rounds_decide_nothing() -> None:
    results = [Result(3, 0, examples=3, array=np.array([1.0], np.float32)),
               Result(3, 1, examples=1, array=np.array([5.0], np.float32))]
    d = combine(3, RoundKind.AVERAGE, results, Rules(mode="localsgd"))
    assert d.kind == DecisionKind.PARAMS and d.array.tolist() == [2.0]
    assert combine(2, RoundKind.LOCAL, results, Rules(mode="localsgd")).kind == DecisionKind.LOCAL


def test_argmin_takes_the_lowest_cost_and_nan_never_wins() -> None:
    results = [stochastic(0, 7, NAN), stochastic(1, 9, 0.5), stochastic(2, 11, math.inf), stochastic(3, 13, 0.5)]
    d = combine(3, RoundKind.STOCHASTIC, results, Rules())
    assert (d.kind, d.seed, d.round) == (DecisionKind.SEED, 9, 3)  # the tie goes to the lower worker
    assert round_loss(RoundKind.STOCHASTIC, results, Rules()) == 0.5


def test_notebook_steps_when_a_trial_beat_the_current_cost_else_moves_the_biases() -> None:
    rules = Rules(rule="notebook")
    yes = [stochastic(0, 1, 0.4), stochastic(1, 2, 0.3, beats=True)]
    no = [stochastic(0, 1, 0.4), stochastic(1, 2, 0.3)]
    assert combine(3, RoundKind.STOCHASTIC, yes, rules).kind == DecisionKind.STALE
    assert combine(3, RoundKind.STOCHASTIC, no, rules).kind == DecisionKind.BIAS_ONLY


def test_elitist_keeps_theta_unless_the_winner_beat_it() -> None:
    rules = Rules(rule="elitist")
    assert combine(3, RoundKind.STOCHASTIC, [stochastic(0, 1, 0.4), stochastic(1, 2, 0.3)],
                   rules).kind == DecisionKind.KEEP
    d = combine(3, RoundKind.STOCHASTIC, [stochastic(0, 1, 0.4), stochastic(1, 2, 0.3, beats=True)], rules)
    assert (d.kind, d.seed) == (DecisionKind.SEED, 2)


def test_stale_mode_re_applies_the_gradient_whatever_came_back() -> None:
    rules = Rules(mode="stale", k=0)
    assert combine(3, RoundKind.STOCHASTIC, [Result(3, 0)], rules).kind == DecisionKind.STALE
    assert math.isnan(round_loss(RoundKind.STOCHASTIC, [Result(3, 0)], rules))


def test_no_result_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="round 3: no worker returned a result"):
        combine(3, RoundKind.STOCHASTIC, [], Rules())


def test_es_rank_weights_over_all_workers_antithetic_pairs() -> None:
    """2 workers x k = 4 (2 seeds as +/- pairs): 8 costs ranked together; w = es_lr * (u(-) - u(+)) / 4."""
    rules = Rules(rule="es", k=4, n_workers=2, es_lr=2.0)
    results = [Result(3, 1, costs=(0.5, 0.6, 0.9, 0.1)), Result(3, 0, costs=(0.2, 0.8, 0.3, 0.4))]
    d = combine(3, RoundKind.STOCHASTIC, results, rules)
    assert d.kind == DecisionKind.ES and d.array.dtype == np.float32
    # worker order 0 then 1: costs 0.2 0.8 0.3 0.4 | 0.5 0.6 0.9 0.1 -> ranks 1 6 2 3 | 4 5 7 0, u = rank/7 - 1/2
    u = np.array([1, 6, 2, 3, 4, 5, 7, 0]) / 7 - 0.5
    expected = 2.0 * (u[1::2] - u[0::2]) / 4
    np.testing.assert_allclose(d.array, expected.astype(np.float32), rtol=0, atol=0)
    assert d.array[0] > 0 and d.array[3] < 0  # +E won seed (0, 0): move towards +E; -E won seed (1, 1)
    assert round_loss(RoundKind.STOCHASTIC, results, rules) == pytest.approx(0.1)


def test_es_weights_of_a_missing_worker_are_zero_and_a_nan_ranks_worst() -> None:
    rules = Rules(rule="es", k=2, n_workers=3)
    w = es_weights([Result(3, 2, costs=(NAN, 0.3)), Result(3, 0, costs=(0.1, 0.2))], rules)
    assert w.shape == (3,) and w[1] == 0.0
    u = np.array([0, 1, 3, 2]) / 3 - 0.5  # 0.1 0.2 | nan 0.3: the nan ranks last
    np.testing.assert_array_equal(w, np.array([(u[1] - u[0]) / 2, 0.0, (u[3] - u[2]) / 2], np.float32))


def test_es_zscore_weights_keep_the_margin() -> None:
    rules = Rules(rule="guided", k=2, n_workers=1, es_weights="zscore")
    w = es_weights([Result(3, 0, costs=(0.1, 0.3))], rules)
    # mean 0.2, std 0.1: z = -1, +1 -> u = -1/2, +1/2; w = (1/2 - -1/2) / 1
    np.testing.assert_allclose(w, [1.0], rtol=1e-6)


def test_es_rejects_a_wrong_number_of_costs() -> None:
    with pytest.raises(ValueError, match="worker 0 sent 3 costs, expected 4"):
        es_weights([Result(3, 0, costs=(0.1, 0.2, 0.3))], Rules(rule="es", k=4, n_workers=1))


def test_shared_costs_add_up_the_shards_weighted_by_examples() -> None:
    """Mean costs on shards of 600 and 400 examples: the minibatch cost is their examples-weighted mean."""
    results = [Result(3, 1, examples=400, costs=(1.0, 0.5, 0.25)), Result(3, 0, examples=600, costs=(0.0, 1.0, 0.5))]
    costs = shared_costs(results, 3)
    assert costs == [float(np.float32(0.4)), float(np.float32(0.8)), float(np.float32(0.4))]


def test_shared_argmin_names_the_rounds_seed_of_the_lowest_summed_cost() -> None:
    results = [Result(5, 0, examples=500, costs=(0.9, 0.2, 0.4)), Result(5, 1, examples=500, costs=(0.1, 0.3, 0.4))]
    rules = Rules(trials="shared", k=3, n_workers=2, job_seed=42)
    d = combine(5, RoundKind.STOCHASTIC, results, rules)
    # summed: 0.5, 0.25, 0.4 -> trial 1, although worker 1's own best was trial 0
    assert (d.kind, d.seed) == (DecisionKind.SEED, trial_seed(42, 5, SHARED_WORKER, 1))
    assert round_loss(RoundKind.STOCHASTIC, results, rules) == 0.25


def test_shared_es_weights_come_from_the_summed_costs() -> None:
    rules = Rules(rule="es", trials="shared", k=4, n_workers=2)
    results = [Result(3, 0, examples=1, costs=(0.1, 0.5, 0.4, 0.0)),
               Result(3, 1, examples=1, costs=(0.3, 0.5, 0.4, 0.2))]
    w = combine(3, RoundKind.STOCHASTIC, results, rules).array
    u = np.array([1, 3, 2, 0]) / 3 - 0.5  # summed means 0.2 0.5 0.4 0.1
    np.testing.assert_array_equal(w, ((u[1::2] - u[0::2]) / 2).astype(np.float32))
    assert w.shape == (2,)  # one weight per shared seed, whatever the number of workers


def test_quadratic_weights_step_to_the_minimizer_of_an_exact_quadratic() -> None:
    """Costs drawn from f(v) = 1 + a.v + v'Hv/2 at v = +-zeta of each derived seed: the weights' step
    sum_i w_i zeta_i is the minimizer -H^-1 a, and the trust region caps it at es_lr times the farthest trial."""
    a, h = np.array([0.3, -0.2]), np.array([[2.0, 0.5], [0.5, 1.0]])
    rules = Rules(rule="guided", k=6, n_workers=2, es_weights="quadratic", job_seed=8, es_lr=5.0)
    results, zetas = [], []
    for worker in (1, 0):
        z = [subspace_coefficients(trial_seed(8, 4, worker, i), 2).astype(np.float64) for i in range(3)]
        costs = tuple(float(1 + a @ v + v @ h @ v / 2) for zeta in z for v in (zeta, -zeta))
        results.append(Result(4, worker, costs=costs))
        zetas.append(z)
    d = combine(4, RoundKind.STOCHASTIC, results, rules, subspace=2)
    assert d.kind == DecisionKind.ES and d.array.shape == (6,)
    zeta = np.stack(zetas[1] + zetas[0])  # slots: worker 0's seeds, then worker 1's
    np.testing.assert_allclose(zeta.T @ d.array.astype(np.float64), -np.linalg.solve(h, a), rtol=1e-5, atol=1e-6)
    tight = combine(4, RoundKind.STOCHASTIC, results, Rules(**{**rules.__dict__, "es_lr": 0.01}), subspace=2)
    farthest = max(np.linalg.norm(z) for z in zeta)
    assert np.linalg.norm(zeta.T @ tight.array.astype(np.float64)) == pytest.approx(0.01 * farthest, rel=1e-5)
