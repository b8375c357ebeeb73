"""The coordinator actor's failures on a real Ray cluster: a diverged job and a full disk end FAILED with a
readable message, and the actor's own failure path returns its result even when the disk refuses it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from configs import small_config

from coordinator.actor import start_job
from coordinator.config import validate_config

pytestmark = pytest.mark.slow


def cfg(workers: int, lr: float = 1.0, cpus: float = 1) -> dict:
    return small_config("ray-fail", 5, train={"lr": lr}, cluster={"workers": workers, "cpus_per_worker": cpus})


def full(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/full", path)  # writing it fails with ENOSPC, as on a full disk
    return path


def test_a_diverged_job_on_ray_ends_failed_without_a_model(ray_cluster: object, tmp_path: Path) -> None:
    result = start_job(validate_config(cfg(2, lr=1e308)), str(tmp_path)).result()
    assert result.status == "FAILED"
    assert result.message == ("diverged at round 2 of 11: the cost of every trial is nan "
                                 "(lower train.lr, now 1e+308, or hybrid.sigma, now 1)")
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "result.json").is_file()


def test_a_full_disk_on_ray_ends_failed_readably(ray_cluster: object, tmp_path: Path) -> None:
    tmp = full(tmp_path / "checkpoint.tmp.npz")
    result = start_job(validate_config(cfg(1)), str(tmp_path)).result()
    assert result.status == "FAILED"
    assert result.message == f"OSError: [Errno 28] No space left on device: '{tmp}' while writing the checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["config.json", "error.log", "result.json"]


def test_the_actor_failure_path_never_raises(ray_cluster: object, tmp_path: Path) -> None:
    """The job fails in the actor (its workers do not fit), and error.log and result.json cannot be written."""
    for name in ("error.log.tmp", "result.json.tmp"):
        full(tmp_path / name)
    result = start_job(validate_config(cfg(3, cpus=2)), str(tmp_path)).result()
    assert result.status == "FAILED"
    assert result.message.startswith("ClusterTooSmall: cluster.workers: 3 workers x 2.0 CPU / 0.0 GPU need 6 CPUs")
    assert os.listdir(tmp_path) == ["config.json"]
