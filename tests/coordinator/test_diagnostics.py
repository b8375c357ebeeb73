"""hybrid.diagnostics: per-epoch history columns from one extra backprop per stochastic round; off, nothing."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from configs import small_config

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.outputs import DIAGNOSTIC_COLUMNS, HISTORY_COLUMNS


def cfg(diagnostics: bool, **hybrid: object) -> dict:
    return small_config("diag", train={"epochs": 2}, hybrid={"k": 4, "diagnostics": diagnostics, **hybrid})


def history(folder: Path) -> list[dict[str, str]]:
    with (folder / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_diagnostics_add_columns_and_change_nothing_else(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    on = Job(validate_config(cfg(True)), tmp_path / "on")
    on.run()
    off = Job(validate_config(cfg(False)), tmp_path / "off")
    off.run()
    assert torch.equal(on.state.theta, off.state.theta)  # the extra backprop moves nothing
    rows_on, rows_off = history(tmp_path / "on"), history(tmp_path / "off")
    assert list(rows_off[0]) == HISTORY_COLUMNS
    assert list(rows_on[0]) == HISTORY_COLUMNS + DIAGNOSTIC_COLUMNS
    for row in rows_on:
        assert -1.0 <= float(row["diag_cosine"]) <= 1.0
        assert 0.0 <= float(row["diag_beat_share"]) <= 1.0
    # the share is the epoch's improvements over its trials: 4 trials per stochastic round, 1 worker
    done, found = 0, 0.0
    for row in rows_on:
        found += float(row["diag_beat_share"]) * (int(row["rounds_stochastic"]) - done) * 4
        done = int(row["rounds_stochastic"])
    assert np.isclose(found, int(rows_on[-1]["improvements"]))


def test_a_stale_step_follows_the_minibatch_gradient_loosely_and_runs_no_trials(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    Job(validate_config(cfg(True, mode="stale", r=2)), tmp_path).run()
    rows = history(tmp_path)
    assert all(r["diag_beat_share"] == "nan" for r in rows)
    assert all(0.0 < float(r["diag_cosine"]) <= 1.0 for r in rows)  # last batch's gradient: still downhill


def test_sigma_zero_trials_never_beat_the_step(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    Job(validate_config(cfg(True, sigma=0.0)), tmp_path).run()
    assert all(float(r["diag_beat_share"]) == 0.0 for r in history(tmp_path))
