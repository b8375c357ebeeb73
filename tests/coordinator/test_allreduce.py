"""cluster.full_rounds allreduce on a real Ray cluster: the workers sum full rounds in a gloo ring among themselves,
the gradient never reaches the coordinator, the replicas stay bitwise equal, and the job trains as the server
mode does (not to the bit: the ring sums in another order)."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from configs import small_config
from faults import thawed_after

from coordinator import job as job_module
from coordinator.config import ConfigError, validate_config
from coordinator.job import Job
from coordinator.outputs import load_checkpoint
from coordinator.ray_pool import ray_pool
from workers.collective import ring_bytes

pytestmark = pytest.mark.slow


def cfg(mode: str, full_rounds: str, workers: int = 3, train: dict[str, Any] | None = None, **hybrid: object) -> dict:
    return small_config("allreduce", 7, hybrid={"mode": mode, "replica_check_every": 3, **hybrid},
                        train={"epochs": 1, **(train or {})},
                        cluster={"workers": workers, "cpus_per_worker": 0.5, "full_rounds": full_rounds})


def run(raw: dict, out: Path) -> tuple[Any, np.ndarray]:
    job = Job(validate_config(raw), out, pool_factory=ray_pool)
    result = job.run()
    return result, load_checkpoint(out)[0]


TWO_EPOCHS = cfg("hybrid", "allreduce", train={"epochs": 2, "checkpoint_every": 4})
Undisturbed = Callable[[dict], tuple[Any, np.ndarray]]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> Undisturbed:
    """A config's undisturbed run (result, final parameters), run once for the module's tests that end bitwise
    where it ends."""
    done: dict[str, tuple[Any, np.ndarray]] = {}

    def get(raw: dict) -> tuple[Any, np.ndarray]:
        key = json.dumps(raw, sort_keys=True)
        if key not in done:
            done[key] = run(raw, tmp_path_factory.mktemp("undisturbed"))
        return done[key]
    return get


@pytest.mark.parametrize("mode", ["backprop", "hybrid"])
def test_allreduce_trains_as_the_server_does_and_the_gradient_stays_off_the_coordinator(
        ray_cluster: object, undisturbed: Undisturbed, tmp_path: Path, mode: str) -> None:
    server, theta_s = run(cfg(mode, "server"), tmp_path / "server")
    ring, theta_r = undisturbed(cfg(mode, "allreduce"))
    assert server.status == ring.status == "SUCCEEDED"
    assert ring.replica_checks.checked > 0 and ring.replica_checks.mismatches == 0
    # the same training, up to the ring's order of summation
    assert np.allclose(theta_s, theta_r, rtol=0, atol=1e-4)
    assert abs(ring.final.dev_accuracy - server.final.dev_accuracy) <= 0.02
    # no gradient crossed the coordinator's link: a full round is scalars up and a kind byte down
    p, n, full_rounds = ring.num_parameters, 3, ring.rounds.full
    assert server.bytes.full.up >= full_rounds * n * 4 * p
    assert ring.bytes.full.up < full_rounds * n * 64 and ring.bytes.full.down < full_rounds * n * 16
    # each worker's ring moved 2 (n-1)/n of the gradient and its examples count, each way
    per_worker = ring_bytes(4 * (p + 1), n)
    assert ring.bytes.ring.full.sent == ring.bytes.ring.full.received == full_rounds * n * per_worker
    assert server.bytes.ring.full.sent == 0


def pids(job: Job) -> list[int]:
    return [i.pid for i in ray.get([a.info.remote() for a in job.pool.actors])]  # type: ignore[union-attr]


def test_a_worker_killed_in_full_and_stochastic_rounds_changes_nothing(ray_cluster: object, undisturbed: Undisturbed,
                                                                       tmp_path: Path) -> None:
    """SIGKILL in the middle of the job, three times: its peers' allreduce fails at once (the connection resets),
    the worker is restarted and given the state read from a live replica, the group is formed again and the round
    redone: the job ends bitwise where the undisturbed allreduce job ends."""
    raw = TWO_EPOCHS
    clean, theta_clean = undisturbed(raw)
    killed: list[int] = []

    def kill(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 0:  # the slots on one node come together: the ring crosses each node's link once
            nodes = [i.node for i in ray.get([a.info.remote() for a in job.pool.actors])]  # type: ignore[union-attr]
            assert len(set(nodes)) == 2 and nodes == sorted(nodes, key=nodes.index)
        if event.round in (3, 6, 11):  # the next round is full (even), stochastic, full
            pid = pids(job)[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    job = Job(validate_config(raw), tmp_path / "kill", pool_factory=ray_pool)
    r = job.run(on_round=kill)
    assert r.status == "SUCCEEDED" and len(set(killed)) == 3
    assert r.worker_failures == 3 and r.replica_checks.mismatches == 0
    assert r.bytes.sync > clean.bytes.sync  # the restarted replica's state, read from a live one and sent to it
    assert np.array_equal(load_checkpoint(tmp_path / "kill")[0], theta_clean)


def test_a_hung_worker_ends_the_collective_in_seconds(ray_cluster: object, undisturbed: Undisturbed, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP, as a wedged worker or a cut link: its peers' allreduce gives up after HES_COLLECTIVE_TIMEOUT_S,
    the pool kills the hung one after HES_WORKER_TIMEOUT_S, and the round is redone over a new group."""
    raw = cfg("backprop", "allreduce")
    clean, theta_clean = undisturbed(raw)
    monkeypatch.setenv("HES_WORKER_TIMEOUT_S", "5")
    monkeypatch.setenv("HES_COLLECTIVE_TIMEOUT_S", "2")
    stopped: list[int] = []

    def freeze(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 4:
            stopped.append(pids(job)[2])
            os.kill(stopped[0], signal.SIGSTOP)

    job = Job(validate_config(raw), tmp_path / "hung", pool_factory=ray_pool)
    with thawed_after(stopped):
        r = job.run(on_round=freeze)
    assert stopped and r.status == "SUCCEEDED" and r.worker_failures == 1
    assert r.replica_checks.mismatches == 0
    assert np.array_equal(load_checkpoint(tmp_path / "hung")[0], theta_clean)


def test_localsgd_averages_are_allreduced(ray_cluster: object, tmp_path: Path) -> None:
    server, theta_s = run(cfg("localsgd", "server", r=3), tmp_path / "server")
    ring, theta_r = run(cfg("localsgd", "allreduce", r=3), tmp_path / "ring")
    assert server.status == ring.status == "SUCCEEDED"
    assert np.allclose(theta_s, theta_r, rtol=0, atol=1e-4)
    assert ring.bytes.full.up < ring.rounds.full * 3 * 64  # losses up, no parameters
    assert ring.bytes.ring.full.sent == ring.bytes.ring.full.received > 0


def test_stop_and_resume_is_bitwise_the_uninterrupted_allreduce_job(ray_cluster: object, undisturbed: Undisturbed,
                                                                     tmp_path: Path) -> None:
    """The checkpoint holds the state read from a replica; the resumed job's new workers are synced from it."""
    raw = validate_config(TWO_EPOCHS)
    whole, theta_whole = undisturbed(TWO_EPOCHS)
    assert whole.status == "SUCCEEDED"
    part = Job(raw, tmp_path / "part", pool_factory=ray_pool)

    def stop_at_8(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 8:
            part.stop()

    assert part.run(on_round=stop_at_8).status == "STOPPED"
    resumed = Job(raw, tmp_path / "part", resume=True, pool_factory=ray_pool)
    assert resumed.state.version == 9
    assert resumed.run().status == "SUCCEEDED"
    assert np.array_equal(resumed.state.theta.numpy(), theta_whole)


def test_every_replica_lost_at_once_rewinds_to_the_checkpoint_and_ends_bitwise(
        ray_cluster: object, undisturbed: Undisturbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All three workers SIGKILLed right after a full round: the state they reduced is gone with them, so the job
    goes back to its last checkpoint, gives the restarted workers that state and redoes the rounds since. It ends
    bitwise where the undisturbed job ends, its rounds counted once. Past MAX_REWINDS the job fails instead."""
    raw = TWO_EPOCHS
    clean, theta_clean = undisturbed(raw)

    def kill_all(job: Job) -> Any:
        killed: list[int] = []

        def on_round(event, progress) -> None:  # type: ignore[no-untyped-def]
            if event.round == 6 and not killed:  # a full round: its gradient is on the replicas only (once: the
                killed.extend(pids(job))  # redone round 6 is left alone)
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
        return on_round

    job = Job(validate_config(raw), tmp_path / "lost", pool_factory=ray_pool)
    r = job.run(on_round=kill_all(job))
    assert r.status == "SUCCEEDED", r.message
    assert "every replica was lost after round 7: rewound to round 4 and redone" in r.message
    assert r.rounds == clean.rounds and r.worker_failures == 3 and r.replica_checks.mismatches == 0
    assert np.array_equal(load_checkpoint(tmp_path / "lost")[0], theta_clean)

    monkeypatch.setattr(job_module, "MAX_REWINDS", 0)
    failing = Job(validate_config(raw), tmp_path / "failing", pool_factory=ray_pool)
    with pytest.raises(RuntimeError, match=r"every replica was lost at once; the job was rewound to round 4 0 times "
                                           r"already .* `hes train --resume` continues it"):
        failing.run(on_round=kill_all(failing))


def test_allreduce_needs_ray_workers() -> None:
    with pytest.raises(ConfigError, match="cluster.full_rounds: allreduce runs among Ray worker actors"):
        validate_config(small_config(cluster={"workers": 2, "backend": "local", "full_rounds": "allreduce"}))
    with pytest.raises(ConfigError, match="cluster.full_rounds"):
        validate_config(small_config(cluster={"workers": 2, "full_rounds": "ring"}))
