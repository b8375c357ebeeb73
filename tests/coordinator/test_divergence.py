"""A diverged job (nan or inf in a loss, every trial's cost, or the parameters) ends FAILED, naming the round
and the knob to turn; it writes result.json and error.log, and never a model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from coordinator.accounting import Counters
from coordinator.config import validate_config
from coordinator.job import Job, local_pool
from coordinator.parts import build_parts
from coordinator.rounds import RoundLoop
from service.cli import main as hes
from workers.messages import Result, RoundKind
from workers.state import Diverged, HybridState, require_finite_parameters


def diverging_cfg(**hybrid: object) -> dict:
    return {"name": "boom", "seed": 3, "data": {"dataset": "digits"},
            "model": {"arch": "mlp", "hidden": [16], "activation": "sigmoid"},
            "train": {"epochs": 2, "batch_size": 100, "lr": 1e308, "l2": 1e-4},
            "hybrid": {"mode": "hybrid", "r": 2, "k": 3, "sigma": 1.25, "combine": "argmin", **hybrid},
            "cluster": {"workers": 0}}


@pytest.mark.parametrize("hybrid,message", [
    ({}, "diverged at round 2 of 22: the cost of every trial is nan "
         "(lower train.lr, now 1e+308, or hybrid.sigma, now 1.25)"),
    ({"mode": "backprop"}, "diverged at round 2 of 22: the batch loss is nan (lower train.lr, now 1e+308)"),
    ({"combine": "elitist"}, "diverged at round 2 of 22: the cost of every trial is nan "
                             "(lower train.lr, now 1e+308, or hybrid.sigma, now 1.25)"),
    ({"mode": "localsgd"}, "diverged at round 2 of 22: the batch loss is nan (lower train.lr, now 1e+308)"),
])
def test_a_diverged_job_fails_naming_the_round_and_the_knob(tmp_path: Path, hybrid: dict, message: str) -> None:
    result = Job(validate_config(diverging_cfg(**hybrid)), tmp_path).run()
    assert (result.status, result.message) == ("FAILED", message)
    assert json.loads((tmp_path / "result.json").read_text()) == result.model_dump(mode="json")
    assert "Diverged" in (tmp_path / "error.log").read_text()
    assert not (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "checkpoint.npz").exists()  # no epoch ended: no checkpoint of nan parameters


def test_hes_train_in_process_reports_the_divergence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps(diverging_cfg()))
    assert hes(["train", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "status FAILED: diverged at round 2 of 22: the cost of every trial is nan" in out
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "FAILED"
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_nan_trial_loses_to_a_finite_one_and_all_nan_is_no_winner(tmp_path: Path) -> None:
    """argmin over the workers' best trials: a nan cost ranks after every finite one (min() cannot order nan)."""
    cfg = validate_config({**diverging_cfg(), "train": {"epochs": 1, "batch_size": 100, "lr": 1.0}})
    parts = build_parts(cfg)
    model, hyper, schedule = parts.model, parts.hyper, parts.schedule
    counters = Counters()
    pool = local_pool(cfg, parts, counters)
    state = HybridState(1, torch.from_numpy(model.initial_parameters(cfg.seed)), None)
    loop = RoundLoop(state, hyper, schedule, "hybrid", "argmin", pool, counters)
    nan = float("nan")
    results = [Result(1, 0, seed=7, cost=nan), Result(1, 1, seed=9, cost=0.5), Result(1, 2, seed=11, cost=math.inf)]
    assert loop.combine(1, RoundKind.STOCHASTIC, results).seed == 9
    pool.close()


def test_non_finite_parameters_are_a_divergence() -> None:
    require_finite_parameters(torch.zeros(4), 5)
    with pytest.raises(Diverged, match="diverged at round 5: 2 of 4 parameters are nan or inf") as info:
        require_finite_parameters(torch.tensor([0.0, math.nan, math.inf, 1.0]), 5)
    assert (info.value.round, info.value.reason) == (5, "2 of 4 parameters are nan or inf")
