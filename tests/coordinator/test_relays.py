"""Node relays (cluster.relays): the same bits and bytes as direct calls, one coordinator call per node per round,
and a relay killed mid-job changes neither."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray
from configs import small_config
from faults import thawed_after

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import RayPool, ray_pool
from coordinator.relays import AUTO_MIN_PER_NODE, use_relays

pytestmark = pytest.mark.slow


def cfg(relays: bool, full_rounds: str = "server") -> dict:
    return small_config("relays", 7, train={"epochs": 2},
                        hybrid={"k": 2, "replica_check_every": 3},
                        cluster={"workers": 3, "cpus_per_worker": 0.5, "relays": relays, "full_rounds": full_rounds})


@pytest.mark.parametrize("full_rounds", ["server", "allreduce"])
def test_relays_change_no_bit_and_no_byte_and_call_once_per_node(ray_cluster: object, tmp_path: Path,
                                                                 full_rounds: str) -> None:
    direct = Job(validate_config(cfg(False, full_rounds)), tmp_path / "direct", pool_factory=ray_pool)
    r1 = direct.run()
    calls: list[int] = []
    nodes: set[str] = set()

    def look(event, progress) -> None:  # type: ignore[no-untyped-def]
        pool = relayed.pool
        assert isinstance(pool, RayPool)
        calls.append(pool.last_calls)
        if event.round == 0:
            nodes.update(i.node for i in ray.get([a.info.remote() for a in pool.actors]))

    relayed = Job(validate_config(cfg(True, full_rounds)), tmp_path / "relayed", pool_factory=ray_pool)
    r2 = relayed.run(on_round=look)
    assert r1.status == r2.status == "SUCCEEDED"
    assert np.array_equal(direct.state.theta.numpy(), relayed.state.theta.numpy())
    assert r1.bytes == r2.bytes
    assert r2.replica_checks.checked > 0 and r2.replica_checks.mismatches == 0
    assert r2.rounds.full > 0 and r2.rounds.stochastic > 0  # both kinds went through the relays
    assert len(nodes) == 2  # 3 workers SPREAD over the session's two nodes
    assert calls and set(calls) == {len(nodes)}  # every round: one call per node, not one per worker
    assert isinstance(direct.pool, RayPool) and direct.pool.last_calls == 3


def test_a_killed_relay_and_a_hung_worker_change_no_bit(ray_cluster: object, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay killed twice fails nothing (its workers are probed, resynced and rerun; none died); a worker that
    hangs behind a relay is marked so by it, killed by the pool and restarted, as with direct calls."""
    clean = Job(validate_config(cfg(True)), tmp_path / "clean", pool_factory=ray_pool)
    clean.run()
    monkeypatch.setenv("HES_WORKER_TIMEOUT_S", "5")  # read when the pool is made
    killed: list[ray.actor.ActorHandle] = []
    later: list[ray.actor.ActorHandle] = []
    stopped: list[int] = []

    def kill(event, progress) -> None:  # type: ignore[no-untyped-def]
        pool = job.pool
        assert isinstance(pool, RayPool) and pool.relays is not None
        if event.round in (3, 8):  # mid-job, before a full round (3) and a stochastic one (8)
            relay = next(iter(pool.relays.relays.values()))
            ray.kill(relay.actor, no_restart=True)
            killed.append(relay.actor)
        if event.round == 5:  # SIGSTOP: the process lives but answers nothing, as a wedged worker would
            stopped.append(ray.get(pool.actors[1].info.remote()).pid)
            os.kill(stopped[-1], signal.SIGSTOP)
        if event.round == 12:
            later.extend(relay.actor for relay in pool.relays.relays.values())

    job = Job(validate_config(cfg(True)), tmp_path / "killed", pool_factory=ray_pool)
    with thawed_after(stopped):
        r = job.run(on_round=kill)
    assert r.status == "SUCCEEDED" and len(killed) == 2 and stopped
    assert r.worker_failures == 1  # the hung worker, killed by the pool; the relays' workers lived
    assert r.replica_checks.mismatches == 0
    assert np.array_equal(job.state.theta.numpy(), clean.state.theta.numpy())
    # the killed relays were made again: a relay per node, none of them a killed one
    assert len(later) == 2 and not {a._actor_id for a in later} & {a._actor_id for a in killed}


def test_auto_turns_relays_on_where_a_node_holds_enough_workers() -> None:
    assert not use_relays("auto", ["a", "b", "a"])
    assert use_relays("auto", ["a"] * AUTO_MIN_PER_NODE + ["b"])
    assert not use_relays("auto", ["a"] * 32)  # one node: a relay would only add a hop
    assert use_relays(True, ["a", "b"]) and not use_relays(False, ["a"] * 8)
    assert validate_config(cfg(False)).cluster.relays is False
    assert validate_config(small_config()).cluster.relays == "auto"
    with pytest.raises(ValueError, match="relays"):
        validate_config(small_config(cluster={"workers": 2, "relays": "sometimes"}))
