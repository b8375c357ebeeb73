"""Low-rank trials on Ray: replicas stay bitwise equal, one worker is bitwise the in-process job, and a
stochastic round's payload is what it is for Gaussian trials, whatever the model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import ray_pool

pytestmark = pytest.mark.slow


def cfg(workers: int, model: dict, dataset: str = "digits", epochs: int = 2) -> dict:
    return {"name": "lowrank", "seed": 5, "data": {"dataset": dataset},
            "model": model, "train": {"epochs": epochs, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
            "hybrid": {"mode": "hybrid", "r": 2, "k": 4, "sigma": 1.0, "combine": "argmin",
                       "replica_check_every": 3, "noise": "lowrank", "noise_rank": 2},
            "cluster": {"workers": workers, "cpus_per_worker": 1}}


MLP_300 = {"arch": "mlp", "hidden": [300], "activation": "sigmoid"}


def test_one_worker_is_bitwise_the_in_process_engine(ray_cluster: object, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # a worker with cpus_per_worker 1 computes on one thread
    local = Job(validate_config(cfg(0, MLP_300)), tmp_path / "local")
    assert local.hyper.noise.family == "lowrank"
    local.run()
    remote = Job(validate_config(cfg(1, MLP_300)), tmp_path / "ray", pool_factory=ray_pool)
    remote.run()
    assert np.array_equal(local.state.theta.numpy(), remote.state.theta.numpy())


@pytest.mark.parametrize("model,dataset", [
    (MLP_300, "digits"),
    ({"arch": "mlp", "hidden": [3000], "activation": "sigmoid"}, "digits"),
    ({"arch": "convnet", "activation": "tanh"}, "synthetic"),  # 16x16 images: the digits' 8x8 are too small
], ids=["mlp300", "mlp3000", "convnet"])
def test_two_workers_replicas_agree_and_payload_is_unchanged(ray_cluster: object, tmp_path: Path, model: dict,
                                                             dataset: str) -> None:
    r = Job(validate_config(cfg(2, model, dataset, epochs=1)), tmp_path, pool_factory=ray_pool).run()
    assert r.status == "SUCCEEDED", r.message
    assert r.replica_checks.checked > 0 and r.replica_checks.mismatches == 0
    n, s = 2, r.bytes.stochastic
    assert r.rounds.stochastic > 0
    assert s.up / (n * r.rounds.stochastic) <= 32 and s.down / (n * r.rounds.stochastic) <= 16
