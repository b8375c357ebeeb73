"""The model a job config names: one of the paper's networks, or the job's own module (model.arch module).

A job's own module or data is checked against the other before any round: the module's output on two training
examples must fit the targets and the loss (workers/data/arrays.py `check_fit`).
"""
from __future__ import annotations

from coordinator.config import JobConfig
from workers.data import DataError, Dataset, check_fit
from workers.losses import Loss
from workers.models import Model, build_model
from workers.module_model import module_model

OWN_DATA = ("npz", "factory")


def make_model(cfg: JobConfig, data: Dataset) -> Model:
    """The job's Model for `data`; ValueError (DataError, FactoryError) naming the field when they do not fit."""
    m, loss = cfg.model, Loss(cfg.train.loss)
    if loss.name == "mse" and (m.arch != "module" or cfg.data.dataset not in OWN_DATA):
        raise ValueError("train.loss: mse needs a module (model.arch module) and real-valued targets "
                         "(data.dataset npz or factory); the paper's networks and data sets are classifiers")
    if m.arch != "module":
        if cfg.data.dataset in OWN_DATA and (data.x_train.ndim != 4 or data.x_train.shape[1] != 1
                                             or data.x_train.shape[2] != data.x_train.shape[3]):
            raise DataError(f"model.arch: {m.arch} takes square one-channel images (N, 1, side, side); x_train is "
                            f"{data.x_train.shape} (model.arch module takes any shape)")
        model = build_model(m.arch, m.hidden, m.activation, m.init, data.image_side)
    else:
        model = module_model(str(m.factory), m.kwargs, m.perturb, loss, cfg.seed)
    if m.arch == "module" or cfg.data.dataset in OWN_DATA:
        where = {"npz": "data.path", "factory": "data.factory"}.get(cfg.data.dataset, "model.factory")
        check_fit(model, model.initial_parameters(cfg.seed), data, where)
    return model
