"""A black-box job's parts (config `objective`): its policy, hyperparameters and round schedule, no data set.

The trials of a black-box job spread around theta itself (mode zo): trial +-i has weights theta -+ sigma * E_i,
so `hybrid.sigma` is the standard deviation of a trial's shift of every weight, and the step is
es_lr * sigma * sum_i w_i E_i (coordinator/combine.py weighs the seeds by the centered ranks of their returns).
The job "trains" on no examples: its data set is empty, and an epoch is objective.rounds_per_epoch rounds.
"""
from __future__ import annotations

import numpy as np

from coordinator.config import JobConfig
from workers.blackbox import objective_spec
from workers.data import Dataset
from workers.losses import Loss
from workers.models import Model, mlp
from workers.module_model import module_model
from workers.replica import Schedule
from workers.state import Hyper, Search
from workers.steps import noise_spec


def objective_parts(cfg: JobConfig, call_runner: bool = True) -> tuple[Dataset, Model, Hyper, Schedule]:
    """(an empty data set, the policy, the hyperparameters, the schedule) of a job with an `objective`;
    `call_runner`: make the episode runner once here, so that its errors name objective.factory at once."""
    o, m, h = cfg.objective, cfg.model, cfg.hybrid
    assert o is not None
    if m.arch == "module":
        model: Model = module_model(str(m.factory), m.kwargs, m.perturb, Loss(), cfg.seed)
        inputs = 0
    else:
        assert o.inputs is not None and o.outputs is not None
        model = mlp(o.inputs, list(m.hidden), m.activation, m.init or "fan_in", classes=o.outputs)
        inputs = o.inputs
    spec = objective_spec(o.factory, o.kwargs, o.episodes, o.eval_episodes, cfg.seed, inputs if o.normalize else 0)
    if call_runner:
        spec.runner()  # the factory imports and runs here first: its errors name objective.factory before any round
    search = Search("es", "independent", h.k, cfg.seed, True, es_lr=h.es_lr, es_weights=h.es_weights)
    # lr 1 over a batch of 1: a trial's shift is sigma * E (Hyper.shift_scale), no L2 (nothing decays a policy)
    hyper = Hyper(1.0, 0.0, h.sigma, 1, model.num_weights, noise_spec(model, h.noise, h.noise_rank), search=search,
                  objective=spec)
    # one "batch" per round: the schedule counts rounds_per_epoch rounds to an epoch, every one stochastic
    schedule = Schedule("zo", 1, 1, o.rounds_per_epoch, cfg.seed, False)
    empty_x, empty_y = np.zeros((0, inputs), np.float32), np.zeros(0, np.int64)
    data = Dataset(f"objective {o.factory}", empty_x, empty_y, empty_x, empty_y, empty_x, empty_y)
    return data, model, hyper, schedule
