"""A worker's node goes away and comes back, on a Ray cluster of this module's own (1 + 1 CPUs, so no other node has
room for the lost worker): the job shrinks to the worker left, then grows back when a node joins."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
from configs import small_config

from coordinator import membership as membership_module
from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import actor_record, ray_pool
from workers.hybrid import batch_loss_and_grad_sum
from workers.messages import RoundKind

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Any]:
    """Two nodes of 1 CPU; the driver joins the head. A session's shared cluster is left and rejoined after. A test
    leaves it as it found it, a head and one node of 1 CPU (the node it removed replaced by the one it added)."""
    from ray.cluster_utils import Cluster

    shared = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="hes", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if shared is not None:
            ray.init(address=shared, namespace="hes", log_to_driver=False)


def cfg(full_rounds: str = "server", relays: bool = False) -> dict:
    return small_config("elastic", 5, model={"hidden": [32]}, train={"epochs": 2},
                        hybrid={"k": 4, "replica_check_every": 3},
                        cluster={"workers": 2, "cpus_per_worker": 1, "full_rounds": full_rounds, "relays": relays})


def wait_alive(actor: Any) -> None:
    """Until Ray has placed the actor's bundle on the new node and restarted it there (not an assertion)."""
    deadline = time.monotonic() + 180
    while actor_record(actor).state != "ALIVE":
        assert time.monotonic() < deadline, "Ray did not restart the worker on the new node"
        time.sleep(0.2)


@pytest.mark.parametrize(("full_rounds", "relays"), [("server", False), ("allreduce", False), ("server", True)],
                         ids=["server", "allreduce", "server-relays"])
def test_a_lost_node_shrinks_the_job_and_a_new_node_grows_it_back(own_cluster: Any, tmp_path: Path, full_rounds: str,
                                                                  relays: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """allreduce: the group is formed again over the worker left (a group of one), then over both. relays: the relay
    of the lost node goes with it, its worker is recovered as after any failed call, and the new node gets one."""
    torch.set_num_threads(1)
    monkeypatch.setattr(membership_module, "REJOIN_POLL_S", 0.0)  # look for the missing worker every round
    head = ray.get_runtime_context().get_node_id()
    seen: dict[str, Any] = {"gradients": {}}
    job = Job(validate_config(cfg(full_rounds, relays)), tmp_path, pool_factory=ray_pool)

    def on_round(event, progress) -> None:  # type: ignore[no-untyped-def]
        pool = job.pool
        if event.round == 0:
            nodes = [i.node for i in ray.get([a.info.remote() for a in pool.actors])]  # type: ignore[union-attr]
            seen["away"] = next(i for i, n in enumerate(nodes) if n != head)
        if event.round == 3:
            other = next(n for n in own_cluster.worker_nodes)
            own_cluster.remove_node(other)  # the next (full) round's call to its worker fails; no node has room
        message = progress.snapshot().message
        if "shrunk" not in seen and message:
            seen.update(shrunk=event.round, message=message, workers=(pool.alive, pool.restarting))  # type: ignore[union-attr]
        if event.round == seen.get("shrunk", -9) + 4:
            own_cluster.add_node(num_cpus=1)
            wait_alive(pool.actors[seen["away"]])  # type: ignore[union-attr]
        if "shrunk" in seen and "grown" not in seen and pool.alive == 2:  # type: ignore[union-attr]
            seen["grown"] = event.round
            seen["nodes"] = {i.node for i in ray.get([a.info.remote() for a in pool.actors])}  # type: ignore[union-attr]
            seen["relayed"] = None if pool.relays is None else set(pool.relays.relays)  # type: ignore[union-attr]
        if event.kind == "full":  # the combined gradient is the whole batch's mean, however many workers
            seen["gradients"][event.round] = (pool.alive, job.state.grad.numpy().copy())  # type: ignore[union-attr]
        seen["theta"][event.round + 1] = job.state.theta.numpy().copy()

    seen["theta"] = {0: job.state.theta.numpy().copy()}  # the parameters each round starts from
    r = job.run(on_round=on_round)
    assert r.status == "SUCCEEDED"
    shrunk, grown = seen["shrunk"], seen["grown"]
    assert shrunk == 4 and grown == shrunk + 5  # round 4 (the 5th) found the node gone and was redone
    assert seen["message"] == "ran on 1 of 2 workers from round 5" and seen["workers"] == (1, 1)
    assert r.message == f"ran on 1 of 2 workers in rounds 5 to {grown}"
    assert len(seen["nodes"]) == 2 and head in seen["nodes"]  # back on the new node
    assert seen["relayed"] == (seen["nodes"] if relays else None)  # a relay on each node the workers are on
    assert r.worker_failures == 1  # the node's loss killed the worker once
    assert r.replica_checks.checked > 0 and r.replica_checks.mismatches == 0
    assert r.bytes.sync > 0
    lives = {n for n, _ in seen["gradients"].values()}
    assert lives == {1, 2}
    data, model = job.data, job.model
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    for t, (_, grad) in seen["gradients"].items():
        if job.schedule.kind(t) != RoundKind.FULL:
            continue
        idx = torch.as_tensor(job.schedule.batch(t).copy())
        _, whole = batch_loss_and_grad_sum(model, torch.from_numpy(seen["theta"][t]), x[idx], y[idx])
        assert np.allclose(grad, whole.numpy() / len(idx), rtol=1e-4, atol=1e-6), t
