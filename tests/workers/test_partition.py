"""data.split: dirichlet: the partition (fixed, disjoint, covering, no empty worker, skew grows as alpha falls) and
each worker's share of a round, which every mode takes from the worker's own partition only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.config import validate_config
from coordinator.parts import build_parts
from workers.hybrid import batch_loss_and_grad_sum, local_step, run_trials
from workers.messages import RoundKind, Sync, Task
from workers.noise import trial_seed
from workers.partition import dirichlet_partition, label_skew, share_sizes
from workers.replica import Replica
from workers.search import es_costs, round_seeds
from workers.state import Decision, DecisionKind

LABELS = np.random.default_rng(0).integers(0, 10, size=3000)


def test_the_partition_is_fixed_disjoint_and_covers_the_set() -> None:
    parts = dirichlet_partition(LABELS, 4, 0.3, seed=11)
    again = dirichlet_partition(LABELS, 4, 0.3, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    every = np.concatenate(parts)
    assert len(every) == len(LABELS) and np.array_equal(np.sort(every), np.arange(len(LABELS)))
    other = dirichlet_partition(LABELS, 4, 0.3, seed=12)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_every_worker_gets_an_example_even_at_tiny_alpha() -> None:
    for seed in range(5):
        parts = dirichlet_partition(LABELS[:40], 16, 0.01, seed)
        assert min(len(p) for p in parts) >= 1 and sum(len(p) for p in parts) == 40
    with pytest.raises(ValueError, match="cannot give each of 5 workers one"):
        dirichlet_partition(LABELS[:4], 5, 1.0, 0)


def test_label_skew_grows_as_alpha_falls() -> None:
    skew = [np.mean([label_skew(LABELS, dirichlet_partition(LABELS, 4, alpha, s)) for s in range(3)])
            for alpha in (100.0, 1.0, 0.1)]
    assert skew[0] < 0.1 < skew[1] < skew[2]


def cfg(mode: str, workers: int = 3) -> dict:
    return {"name": "noniid", "seed": 4, "data": {"dataset": "digits", "split": "dirichlet", "alpha": 0.2},
            "model": {"arch": "mlp", "hidden": [8], "activation": "sigmoid"},
            "train": {"epochs": 1, "batch_size": 90, "lr": 1.0, "l2": 1e-4},
            "hybrid": {"mode": mode, "r": 2, "k": 3, "sigma": 1.0}, "cluster": {"workers": workers}}


def test_a_worker_holds_its_partition_only_and_every_round_uses_its_own_share() -> None:
    torch.set_num_threads(1)
    c = validate_config(cfg("hybrid"))
    built = build_parts(c)
    data, model, hyper, schedule, parts = built.data, built.model, built.hyper, built.schedule, built.partitions
    assert parts is not None and schedule.part_sizes == tuple(len(p) for p in parts)
    theta = model.initial_parameters(c.seed)
    grad = np.full_like(theta, 0.01)
    for w in range(3):
        x, y = built.worker_data(w)
        rep = Replica(model, x, y, hyper, schedule, c.seed, 3, "argmin", w, 3)
        assert np.array_equal(rep.x.numpy(), data.x_train[parts[w]])  # only its partition's arrays
        for t in (0, 1, 7):
            own = schedule.own(t, w)
            assert len(own) == share_sizes(90, 3)[w] and own.max() < len(parts[w])
            assert np.array_equal(rep.shard(t), own)
            mine_x, mine_y = torch.from_numpy(x[own]), torch.from_numpy(y[own])
            rep.sync(Sync(t, theta, grad))
            full = rep.handle(Task(t, RoundKind.FULL, Decision(t - 1, DecisionKind.NONE)))
            expect = batch_loss_and_grad_sum(model, torch.from_numpy(theta), mine_x, mine_y)[1]
            assert full.examples == len(own) and np.array_equal(full.array, expect.numpy())
            rep.sync(Sync(t, theta, grad))
            trial = rep.handle(Task(t, RoundKind.STOCHASTIC, Decision(t - 1, DecisionKind.NONE)))
            assert rep.state is not None
            seeds = [trial_seed(c.seed, t, w, i) for i in range(3)]
            out = run_trials(model, rep.state, seeds, mine_x, mine_y, hyper)  # scored on its own share
            assert (trial.seed, trial.cost) == (out.seed, out.cost)
        # localsgd: the local step descends on the same share
        lc = validate_config(cfg("localsgd"))
        local = build_parts(lc)
        lhyper, lsched = local.hyper, local.schedule
        rep = Replica(model, x, y, lhyper, lsched, c.seed, 3, "argmin", w, 3)
        rep.sync(Sync(2, theta, None))
        res = rep.handle(Task(2, RoundKind.LOCAL, Decision(1, DecisionKind.NONE)))
        own = lsched.own(2, w)
        loss, stepped = local_step(model, torch.from_numpy(theta), torch.from_numpy(x[own]),
                                   torch.from_numpy(y[own]), lhyper)
        assert rep.state is not None and np.array_equal(rep.state.theta.numpy(), stepped.numpy())
        assert res.examples == len(own)


def test_a_round_of_all_workers_takes_the_batch_size_from_their_partitions() -> None:
    c = validate_config(cfg("backprop", workers=4))
    schedule = build_parts(c).schedule
    for t in range(schedule.rounds_per_epoch * 2):
        assert sum(len(schedule.own(t, w)) for w in range(4)) == 90
    # a partition smaller than its share of an epoch is walked again: every example it has is used
    small = min(range(4), key=lambda w: schedule.part_sizes[w])
    seen = np.concatenate([schedule.own(t, small) for t in range(schedule.rounds_per_epoch)])
    if len(seen) >= schedule.part_sizes[small]:
        assert set(seen.tolist()) == set(range(schedule.part_sizes[small]))


def test_the_coordinator_knows_each_round_s_examples(tmp_path: object) -> None:
    """hybrid.diagnostics scores a round on the examples its workers used: each slot's share of its partition."""
    from coordinator.job import Job

    c = validate_config(cfg("hybrid"))
    job = Job(c, str(tmp_path))
    parts = job.parts.partitions
    assert parts is not None
    for t in (0, 5):
        idx = job.round_examples(t)
        assert len(idx) == 90
        for w in range(3):
            assert set(parts[w][job.schedule.own(t, w)].tolist()) <= set(idx.tolist()) & set(parts[w].tolist())


def test_es_trials_of_a_dirichlet_worker_are_scored_on_its_own_share() -> None:
    """Independent es trials too see only the worker's share, never the whole minibatch of the round."""
    raw = cfg("hybrid")
    raw["hybrid"] = {**raw.get("hybrid", {}), "combine": "es", "k": 4}
    c = validate_config(raw)
    built = build_parts(c)
    model, hyper, schedule = built.model, built.hyper, built.schedule
    assert hyper.search is not None
    theta = model.initial_parameters(c.seed)
    grad = np.full_like(theta, 0.01)
    for w in range(3):
        x, y = built.worker_data(w)
        rep = Replica(model, x, y, hyper, schedule, c.seed, 4, "es", w, 3)
        rep.sync(Sync(1, theta, grad))
        res = rep.handle(Task(1, RoundKind.STOCHASTIC, Decision(0, DecisionKind.NONE)))
        own = schedule.own(1, w)
        assert rep.state is not None and res.examples == len(own)
        _, costs = es_costs(model, rep.state, round_seeds(hyper.search, 1, w), torch.from_numpy(x[own]),
                            torch.from_numpy(y[own]), hyper)
        assert res.costs == tuple(costs)
