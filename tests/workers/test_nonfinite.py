"""Trials with nan or inf costs: reported as they are (not turned into inf), ranked after every finite cost."""
from __future__ import annotations

import math

import torch

from workers.hybrid import run_trials
from workers.models import mlp
from workers.state import HybridState, Hyper, cost_rank


def test_trials_that_all_overflow_report_their_nan_cost() -> None:
    model = mlp(16, [8], "sigmoid", "fan_in")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 4, 4, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    theta = torch.from_numpy(model.initial_parameters(1))
    theta[3] = math.nan
    hyper = Hyper(lr=0.5, l2=1e-3, sigma=1.0, batch_size=40, num_weights=model.num_weights)
    out = run_trials(model, HybridState(5, theta, torch.zeros_like(theta)), [11, 12, 13], x, y, hyper)
    assert math.isnan(out.cost) and out.seed == 11 and out.improvements == 0


def test_non_finite_costs_rank_after_finite_ones() -> None:
    costs = [math.nan, 3.0, math.inf, -math.inf, 1.0, math.nan]
    assert sorted(costs, key=cost_rank)[:2] == [1.0, 3.0]
    assert min([math.nan, 2.0], key=cost_rank) == 2.0
