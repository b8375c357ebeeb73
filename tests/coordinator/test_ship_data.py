"""Data goes where it is needed, on a real two-node Ray cluster: workers read data.path on their node and ship
nothing; when the path is gone there they are sent the stored (uint8) arrays, once per node, only their partition
under dirichlet; either way the job trains bitwise as the local backend does on the coordinator's float arrays."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import ray

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import RayPool, ray_pool
from coordinator.ship_data import link_bytes, recipe, ship
from tests.workers.test_data import write_idx
from workers.data import StoredTrain
from workers.node_data import DataReport, Origin

pytestmark = pytest.mark.slow


def cfg(path: Path, workers: int, backend: str = "ray", split: str = "iid") -> dict:
    return {"name": "ship", "seed": 4, "data": {"dataset": "mnist", "path": str(path), "dev_size": 100,
                                                "split": split, "alpha": 0.5},
            "model": {"arch": "mlp", "hidden": [16], "activation": "sigmoid"},
            "train": {"epochs": 1, "batch_size": 60, "lr": 0.5, "l2": 1e-4},
            "hybrid": {"mode": "hybrid", "r": 2, "k": 3, "sigma": 1.0, "replica_check_every": 3},
            "cluster": {"workers": workers, "cpus_per_worker": 1, "backend": backend}}


def mnist_folder(tmp: Path) -> Path:
    folder = tmp / "mnist"
    folder.mkdir()
    write_idx(folder, n_train=460, n_test=40, side=8)
    return folder


def reports(job: Job) -> list[DataReport]:
    assert isinstance(job.pool, RayPool)
    return job.pool.workers.data_reports


def test_read_on_each_node_and_shipped_once_per_node_train_bitwise_as_today(ray_cluster: object,
                                                                            tmp_path: Path) -> None:
    folder = mnist_folder(tmp_path)
    local = Job(validate_config(cfg(folder, 3, "local")), tmp_path / "local")
    r_local = local.run()
    assert r_local.status == "SUCCEEDED"
    on_node = Job(validate_config(cfg(folder, 3)), tmp_path / "node", pool_factory=ray_pool)
    r_node = on_node.run()
    assert [r.origin for r in reports(on_node)] == [Origin.NODE] * 3 and r_node.bytes.dataset == 0
    assert r_node.bytes == r_local.bytes  # the same payload, and no data set on either
    assert np.array_equal(on_node.state.theta.numpy(), local.state.theta.numpy())

    shipped = Job(validate_config(cfg(folder, 3)), tmp_path / "shipped", pool_factory=ray_pool)
    stored = shipped.parts.data.stored
    assert stored is not None and stored.x.dtype == np.uint8
    shutil.rmtree(folder)  # the coordinator has read it; the workers' nodes no longer can
    r_shipped = shipped.run()
    got = reports(shipped)
    assert [r.origin for r in got] == [Origin.SHIPPED] * 3 and all("missing" in r.reason for r in got)
    here = ray.get_runtime_context().get_node_id()
    others = {r.node for r in got} - {here}
    assert len({r.node for r in got}) == 2 and len(others) == 1  # three workers SPREAD over two nodes
    assert r_shipped.bytes.dataset == stored.nbytes == 360 * (8 * 8 + 1)  # once for the other node, uint8
    assert np.array_equal(shipped.state.theta.numpy(), local.state.theta.numpy())
    assert r_shipped.rounds == r_node.rounds and r_shipped.final == r_node.final


def test_dirichlet_ships_each_worker_only_its_partition(ray_cluster: object, tmp_path: Path) -> None:
    folder = mnist_folder(tmp_path)
    local = Job(validate_config(cfg(folder, 3, "local", "dirichlet")), tmp_path / "local")
    assert local.run().status == "SUCCEEDED"
    # three 1-CPU workers cannot all fit on one 2-CPU node: at least one is away from the coordinator's node
    job = Job(validate_config(cfg(folder, 3, split="dirichlet")), tmp_path / "ray", pool_factory=ray_pool)
    shutil.rmtree(folder)
    r = job.run()
    parts = job.parts.partitions
    assert parts is not None
    here = ray.get_runtime_context().get_node_id()
    got = reports(job)
    assert [g.origin for g in got] == [Origin.SHIPPED] * 3 and len({g.node for g in got}) == 2
    assert [g.nbytes for g in got] == [len(p) * (8 * 8 + 1) for p in parts]  # its partition, as uint8
    assert r.bytes.dataset == sum(g.nbytes for g in got if g.node != here) > 0
    assert np.array_equal(job.state.theta.numpy(), local.state.theta.numpy())


def test_each_object_is_put_once_and_counted_once_per_other_node(ray_cluster: object) -> None:
    a = StoredTrain(np.zeros((10, 4, 4), np.uint8), np.zeros(10, np.uint8), 0.0, 1.0)
    b = a.take(np.arange(3))
    how = recipe(validate_config({"data": {"dataset": "digits"}}))
    sent = ship([a, a, b], how)
    assert sent[0].shipped[0] == sent[1].shipped[0] != sent[2].shipped[0]
    assert sent[0].digest == sent[1].digest != sent[2].digest
    assert ray.get(sent[2].shipped[0]).x.tobytes() == b.x.tobytes()
    rep = [DataReport(Origin.SHIPPED, "n2", a.nbytes), DataReport(Origin.SHIPPED, "n2", a.nbytes),
           DataReport(Origin.SHIPPED, "n2", b.nbytes)]
    assert link_bytes(rep, sent, here="n1") == a.nbytes + b.nbytes  # a pulled to n2 once, b once
    assert link_bytes(rep, sent, here="n2") == 0  # all on the coordinator's node: no link
    rep[1] = DataReport(Origin.NODE, "n3", 0)
    rep[2] = DataReport(Origin.SHIPPED, "n3", b.nbytes)
    assert link_bytes(rep, sent, here="n1") == a.nbytes + b.nbytes
