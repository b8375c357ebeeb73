"""Jobs of a model and data of their own: in process (classification, sequences, regression) and on Ray, where
the job's code reaches every node through cluster.runtime_env."""
from __future__ import annotations

import csv
import importlib.util
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import ray_pool
from workers.data import DataError

TABULAR = {"name": "own", "seed": 3,
           "data": {"dataset": "factory", "factory": "examples.tabular:breast_cancer"},
           "model": {"arch": "module", "factory": "examples.tabular:mlp", "kwargs": {"hidden": 16}},
           "train": {"epochs": 2, "batch_size": 50, "lr": 0.1},
           "hybrid": {"mode": "hybrid", "r": 2, "k": 4, "sigma": 1.0, "replica_check_every": 3},
           "cluster": {"workers": 0, "cpus_per_worker": 1}}


@pytest.fixture(autouse=True)
def examples_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("examples.tabular.CACHE", tmp_path / "cache")  # the example writes its .npz here


def with_(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    return {**base, **{k: {**base.get(k, {}), **v} for k, v in sections.items()}}


@pytest.mark.parametrize("noise,perturb", [("gaussian", "weights"), ("lowrank", "all")])
def test_a_tabular_module_trains_in_process(tmp_path: Path, noise: str, perturb: str) -> None:
    raw = with_(TABULAR, hybrid={"noise": noise}, model={"perturb": perturb})
    r = Job(validate_config(raw), tmp_path).run()
    assert r.status == "SUCCEEDED", r.message
    assert r.final["dev_accuracy"] is not None and r.final["dev_accuracy"] > 0.8  # 2 classes, about 63/37
    assert r.rounds.stochastic > 0 and r.replica_checks.mismatches == 0
    from safetensors.numpy import load_file

    assert set(load_file(tmp_path / "model.safetensors")) >= {"0.weight", "1.weight", "5.bias"}


def test_a_character_model_trains_on_sequences(tmp_path: Path) -> None:
    raw = {"name": "chars", "seed": 1,
           "data": {"dataset": "factory", "factory": "examples.charlm:stdlib_text",
                    "kwargs": {"seq_len": 16, "train_chars": 8500, "eval_chars": 1700}},
           "model": {"arch": "module", "factory": "examples.charlm:transformer",
                     "kwargs": {"d": 16, "heads": 2, "layers": 1, "seq_len": 16}},
           "train": {"epochs": 2, "batch_size": 50, "lr": 1.0, "l2": 0.0},
           "hybrid": {"mode": "hybrid", "r": 2, "k": 2, "noise": "lowrank"}, "cluster": {"workers": 0}}
    job = Job(validate_config(raw), tmp_path)
    assert job.data.x_train.shape[1:] == (16,) and job.data.y_train.shape[1:] == (16,)
    r = job.run()
    assert r.status == "SUCCEEDED", r.message
    assert r.final["train_loss"] is not None and r.final["train_loss"] < np.log(128)  # below a uniform guess
    assert r.final["test_accuracy"] is not None and 0 <= r.final["test_accuracy"] <= 1  # per character


def linear(inputs: int = 3) -> torch.nn.Module:
    return torch.nn.Linear(inputs, 1)


def test_a_regression_reports_loss_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    w = np.array([1.5, -2.0, 0.5], dtype=np.float32)
    np.savez(tmp_path / "reg.npz", x_train=x[:250], y_train=x[:250] @ w, x_test=x[250:], y_test=x[250:] @ w)
    raw = {"name": "reg", "data": {"dataset": "npz", "path": str(tmp_path / "reg.npz")},
           "model": {"arch": "module", "factory": f"{__name__}:linear"},
           "train": {"epochs": 3, "batch_size": 20, "lr": 0.1, "l2": 0.0, "loss": "mse"},
           "hybrid": {"mode": "hybrid", "r": 2, "k": 3}, "cluster": {"workers": 0}}
    r = Job(validate_config(raw), tmp_path / "out").run()
    assert r.status == "SUCCEEDED", r.message
    assert r.final["dev_accuracy"] is None and r.final["test_accuracy"] is None
    assert r.final["dev_loss"] is not None and r.final["dev_loss"] < 0.1  # from about 7 (the targets' variance)
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert doc["final"]["train_accuracy"] is None
    with (tmp_path / "out" / "history.csv").open() as f:
        assert [row["dev_accuracy"] for row in csv.DictReader(f)] == ["", "", ""]
    from service.history import read_history
    from service.report import plot_history

    figs = plot_history(read_history(tmp_path / "out"), "reg")
    assert "accuracy" not in figs and "loss" in figs  # a loss-only job has no accuracy plot


def test_a_model_that_does_not_fit_the_data_fails_before_any_round(tmp_path: Path) -> None:
    raw = with_(TABULAR, model={"kwargs": {"inputs": 20}})
    with pytest.raises(DataError, match=r"^data\.factory: the model's forward fails on x_train\[:2\]"):
        Job(validate_config(raw), tmp_path)
    with pytest.raises(ValueError, match=r"^train\.loss: mse needs a module"):
        Job(validate_config({"data": {"dataset": "digits"}, "train": {"loss": "mse"}}), tmp_path)


@pytest.mark.slow
def test_one_ray_worker_is_bitwise_the_in_process_job(ray_cluster: object, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # a worker with cpus_per_worker 1 computes on one thread
    raw = with_(TABULAR, hybrid={"noise": "lowrank"})
    local = Job(validate_config(raw), tmp_path / "local")
    local.run()
    remote = Job(validate_config(with_(raw, cluster={"workers": 1})), tmp_path / "ray", pool_factory=ray_pool)
    remote.run()
    assert np.array_equal(local.state.theta.numpy(), remote.state.theta.numpy())


PACKAGE = '''
import os
import numpy as np
import torch
from sklearn.datasets import load_digits


def net(log: str) -> torch.nn.Module:
    import ray
    with open(log, "a") as f:  # which node built the module: every worker builds it
        f.write(ray.get_runtime_context().get_node_id() + "\\n")
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))


def digits() -> dict:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return {"x_train": x[:1200], "y_train": y[:1200], "x_test": x[1200:], "y_test": y[1200:]}
'''


def wait(handle: Any) -> Any:
    """The job's result document once its run is over."""
    for _ in range(2400):  # the job's own end, not a time limit on it
        poll = handle.poll()
        assert poll.died is None
        if poll.result is not None:
            return poll.result
        time.sleep(0.5)
    raise AssertionError("the job did not end")


@pytest.mark.slow
def test_the_runtime_env_brings_the_jobs_code_to_every_node(ray_cluster: object, tmp_path: Path) -> None:
    """The package exists only in a folder of this test: not importable here, nor on the nodes without
    cluster.runtime_env. The coordinator actor and both workers (one per node) import it from the upload."""
    from coordinator.actor import start_job

    name = f"hes_own_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(PACKAGE)
    assert importlib.util.find_spec(name) is None
    log = tmp_path / "nodes.log"
    raw = {"name": "runtime-env", "seed": 2,
           "data": {"dataset": "factory", "factory": f"{name}:digits"},
           "model": {"arch": "module", "factory": f"{name}:net", "kwargs": {"log": str(log)}},
           "train": {"epochs": 1, "batch_size": 100, "lr": 0.5},
           "hybrid": {"mode": "hybrid", "r": 2, "k": 3, "replica_check_every": 2},
           "cluster": {"workers": 2, "cpus_per_worker": 1, "runtime_env": {"py_modules": [str(tmp_path / name)]}}}
    without = start_job(validate_config(with_(raw, cluster={"runtime_env": None})), str(tmp_path / "without"))
    r = wait(without)
    assert r.status == "FAILED" and f"data.factory: cannot import {name!r}" in r.message  # not on the nodes
    without.kill()
    handle = start_job(validate_config(raw), str(tmp_path / "out"))
    r = wait(handle)
    assert r.status == "SUCCEEDED", r.message
    assert r.replica_checks.checked > 0 and r.replica_checks.mismatches == 0
    s, n = r.bytes.stochastic, 2
    assert s.up / (n * r.rounds.stochastic) <= 32 and s.down / (n * r.rounds.stochastic) <= 16
    assert len(set(log.read_text().split())) == 2  # built on both nodes
    handle.kill()
