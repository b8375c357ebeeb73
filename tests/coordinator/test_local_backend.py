"""cluster.backend: local against the Ray backend on a real two-node cluster: the same final parameters, to the
bit, and the same payload bytes, for hybrid and localsgd jobs of 2 workers, iid and dirichlet, and for the rules
that report every cost (es and guided over shared trials, mode zo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from configs import small_config

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.pool import ReplicaPool
from coordinator.ray_pool import ray_pool


def cfg(backend: str, mode: str, split: str = "iid", hybrid: dict | None = None, **extra: object) -> dict:
    return small_config("backend", 7, data={"split": split, "alpha": 0.3}, model=extra, train={"epochs": 2},
                        hybrid={"mode": mode, "r": 3, "k": 3, "replica_check_every": 4, **(hybrid or {})},
                        cluster={"workers": 2, "cpus_per_worker": 1, "backend": backend})


def model_bytes(folder: Path) -> dict[str, bytes]:
    """Each tensor's bytes in the model file (safetensors orders its metadata as it likes)."""
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(str(folder / "model.safetensors")).items()}


SHARED_ES = {"combine": "es", "trials": "shared", "k": 4, "noise": "lowrank"}


@pytest.mark.parametrize(("mode", "split", "hybrid"), [
    ("hybrid", "iid", {}), ("localsgd", "iid", {}), ("hybrid", "dirichlet", {}),
    ("hybrid", "iid", SHARED_ES), ("hybrid", "dirichlet", SHARED_ES),
    ("hybrid", "iid", {"combine": "guided", "trials": "shared", "k": 4, "guided_m": 2, "guided_alpha": 0.0}),
    ("zo", "iid", {**SHARED_ES, "r": 1}),
], ids=["hybrid", "localsgd", "dirichlet", "es-shared", "es-shared-dirichlet", "guided-shared", "zo"])
def test_local_backend_is_bitwise_the_ray_job(ray_cluster: object, tmp_path: Path, mode: str, split: str,
                                              hybrid: dict) -> None:
    local = Job(validate_config(cfg("local", mode, split, hybrid)), tmp_path / "local")
    threads = torch.get_num_threads()
    r_local = local.run()
    assert torch.get_num_threads() == threads  # the pool gave the process its thread setting back
    assert isinstance(local.pool, ReplicaPool) and local.pool.n_workers == 2
    remote = Job(validate_config(cfg("ray", mode, split, hybrid)), tmp_path / "ray", pool_factory=ray_pool)
    r_ray = remote.run()
    assert r_local.status == r_ray.status == "SUCCEEDED"
    assert np.array_equal(local.state.theta.numpy(), remote.state.theta.numpy())
    assert model_bytes(tmp_path / "local") == model_bytes(tmp_path / "ray")
    assert r_local.bytes == r_ray.bytes and r_local.bytes.total > 0 and r_local.bytes.dataset == 0  # read on each node
    assert r_local.rounds == r_ray.rounds and r_local.final == r_ray.final
    assert r_local.replica_checks.checked == r_ray.replica_checks.checked  # none for localsgd
    assert r_local.replica_checks.mismatches == r_ray.replica_checks.mismatches == 0


def test_local_backend_from_a_finished_model_syncs_first(ray_cluster: object, tmp_path: Path) -> None:
    """model.init_from: the replicas have no state until the first round's sync, counted as sync bytes, the same
    on both backends."""
    first = Job(validate_config({**cfg("local", "hybrid"), "name": "pre"}), tmp_path / "pre")
    first.run()
    raw = cfg("local", "hybrid", init_from=str(tmp_path / "pre"))
    local = Job(validate_config(raw), tmp_path / "local")
    r_local = local.run()
    remote = Job(validate_config({**raw, "cluster": {**raw["cluster"], "backend": "ray"}}), tmp_path / "ray",
                 pool_factory=ray_pool)
    r_ray = remote.run()
    assert np.array_equal(local.state.theta.numpy(), remote.state.theta.numpy())
    assert r_local.bytes == r_ray.bytes
    p = r_local.num_parameters
    assert p is not None and r_local.bytes.sync >= 2 * 4 * p  # each worker got the starting parameters


def test_hes_train_runs_the_local_backend_without_ray(tmp_path: Path) -> None:
    import json

    import ray

    from service.cli import main

    connected = ray.is_initialized()
    assert main(["train", "--config", "digits-demo", "--set", "cluster.backend=local", "--set", "cluster.workers=3",
                 "--set", "train.epochs=1", "--set", "model.hidden=[8]", "--out", str(tmp_path), "--quiet"]) == 0
    assert ray.is_initialized() == connected  # no Ray started (nor left) for it
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["status"] == "SUCCEEDED" and doc["num_workers"] == 3
    assert doc["bytes"]["stochastic"]["up"] == 3 * 21 * doc["rounds"]["stochastic"]  # 3 workers' seeds and costs


def test_a_local_replica_that_differs_is_repaired_as_on_ray(tmp_path: Path) -> None:
    """The replica check of the local backend: a replica whose parameters were damaged is found by its digest,
    resynced (counted as sync) and its round rerun, and the job ends where an undamaged one does."""
    from dataclasses import replace

    raw = cfg("local", "hybrid")
    clean = Job(validate_config(raw), tmp_path / "clean")
    r_clean = clean.run()
    damaged = Job(validate_config(raw), tmp_path / "damaged")

    def damage(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 7:  # round 8 checks the replicas before any result depends on the damage
            rep = damaged.pool.replicas[1]  # type: ignore[union-attr]
            rep.state = replace(rep.state, theta=rep.state.theta + 1.0)

    r_damaged = damaged.run(on_round=damage)
    assert r_damaged.replica_checks.mismatches == 1
    assert np.array_equal(clean.state.theta.numpy(), damaged.state.theta.numpy())
    assert r_damaged.bytes.sync > r_clean.bytes.sync + 4 * (r_clean.num_parameters or 0)


def test_a_dirichlet_worker_keeps_its_own_share_when_others_leave() -> None:
    """Slots are fixed: when the live workers change, a worker still takes its own partition's share; the missing
    worker's share is skipped."""
    from coordinator.job import make_replica
    from coordinator.parts import build_parts
    from workers.messages import RoundKind, Sync, Task
    from workers.state import Decision, DecisionKind

    c = validate_config(cfg("local", "backprop", "dirichlet"))
    parts = build_parts(c)
    model, schedule = parts.model, parts.schedule
    rep = make_replica(c, parts, 1)
    theta = model.initial_parameters(c.seed)
    rep.sync(Sync(3, theta, None))
    alone = rep.handle(Task(3, RoundKind.FULL, Decision(2, DecisionKind.NONE), members=(1,)))
    assert alone.examples == 50 and np.array_equal(rep.shard(3), schedule.own(3, 1))
