"""The Ray path on a real two-node cluster: bitwise agreement with in-process, bytes, replica repair, failures."""
from __future__ import annotations

import glob
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from configs import small_config
from faults import thawed_after

from coordinator.actor import start_job
from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import ActorRecord, ClusterTooSmall, actor_record, ray_pool
from coordinator.shared_buffers import SHM_DISABLE
from workers.actor import WorkerInfo
from workers.messages import Sync, encode_sync

pytestmark = pytest.mark.slow


def cfg(workers: int, **hybrid: object) -> dict:
    return small_config("ray", 5, model={"hidden": [32]}, train={"epochs": 2},
                        hybrid={"k": 4, "replica_check_every": 3, **hybrid},
                        cluster={"workers": workers, "cpus_per_worker": 1})


def infos(job: Job) -> list[WorkerInfo]:
    """What each of the job's worker actors says of itself (pid, node, shared_memory, ...)."""
    return ray.get([a.info.remote() for a in job.pool.actors])  # type: ignore[union-attr]


def run_ray(tmp: Path, raw: dict, on_round=None) -> Job:  # type: ignore[no-untyped-def]
    job = Job(validate_config(raw), tmp, pool_factory=ray_pool)
    job.result = job.run(on_round=on_round)  # type: ignore[attr-defined]
    return job


def test_one_worker_is_bitwise_the_in_process_engine(ray_cluster: object, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # a worker with cpus_per_worker 1 computes on one thread
    local = Job(validate_config({**cfg(0)}), tmp_path / "local")
    local.run()
    remote = run_ray(tmp_path / "ray", cfg(1))
    assert np.array_equal(local.state.theta.numpy(), remote.state.theta.numpy())


def test_two_workers_bytes_and_spread(ray_cluster: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = []
    left_in_shm: list[str] = []

    def look(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 0:
            nodes.extend(infos(job_ref[0]))
            left_in_shm.extend(glob.glob(f"/dev/shm/hes-{os.getpid()}-*"))

    job_ref: list[Job] = []
    job = Job(validate_config(cfg(2)), tmp_path, pool_factory=ray_pool)
    job_ref.append(job)
    r = job.run(on_round=look)
    assert r.status == "SUCCEEDED" and r.final.dev_accuracy > 0.5
    n, rounds, p = 2, r.rounds, r.num_parameters
    s, f = r.bytes.stochastic, r.bytes.full
    assert s.up / (n * rounds.stochastic) <= 32 and s.down / (n * rounds.stochastic) <= 16
    assert p is not None and abs(f.up / (n * rounds.full * p * 4) - 1) <= 0.02
    assert abs(f.down / (n * rounds.full * p * 4) - 1) <= 0.02
    assert r.replica_checks.checked > 0 and r.replica_checks.mismatches == 0
    assert r.bytes.dataset == 0  # digits is built on each node: nothing shipped
    assert len({i.node for i in nodes}) == 2  # SPREAD over the two nodes
    # the worker on this process's node returns its arrays through shared memory, the other through Ray;
    # the buffers' names are gone once the actors have started
    here = ray.get_runtime_context().get_node_id()
    assert [i.shared_memory for i in nodes] == [i.node == here for i in nodes]
    assert left_in_shm == []
    monkeypatch.setenv(SHM_DISABLE, "1")
    assert np.array_equal(job.state.theta.numpy(), _ray_only(tmp_path / "ray-only").state.theta.numpy())


def _ray_only(tmp: Path) -> Job:
    """The same 2-worker job with shared memory turned off (the caller sets SHM_DISABLE): Ray's replies."""
    seen: list[bool] = []
    job = Job(validate_config(cfg(2)), tmp, pool_factory=ray_pool)
    job.run(on_round=lambda event, progress: seen.extend(i.shared_memory for i in infos(job))
            if event.round == 0 else None)
    assert seen == [False, False]
    return job


def test_corrupted_replica_is_detected_and_repaired(ray_cluster: object, tmp_path: Path) -> None:
    clean = run_ray(tmp_path / "clean", cfg(2))

    saved = {}

    def corrupt(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 7:  # keep the state at version 8, what worker 1 holds after round 8's task
            saved["theta"], saved["grad"] = job.state.theta.numpy().copy(), job.state.grad.numpy().copy()
        if event.round == 8:  # round 9 checks replicas (every 3 rounds): it must catch and repair this
            bad = Sync(8, saved["theta"] + np.float32(1e-3), saved["grad"])
            ray.get(job.pool.actors[1].sync.remote(encode_sync(bad)))  # type: ignore[union-attr]

    job = Job(validate_config(cfg(2)), tmp_path / "bad", pool_factory=ray_pool)
    r = job.run(on_round=corrupt)
    assert r.replica_checks.mismatches >= 1
    assert r.bytes.sync > 0
    assert np.array_equal(job.state.theta.numpy(), clean.state.theta.numpy())


def test_a_worker_killed_five_times_is_counted_five_times_and_changes_nothing(ray_cluster: object,
                                                                             tmp_path: Path) -> None:
    """SIGKILL, as the OOM killer would: Ray restarts the actor each time (no cap per job), the pool resyncs it,
    and each death is counted once, whether the next call fails or finds the actor already restarted (then no
    call fails: the test waits for the restart before the round goes on)."""
    clean = run_ray(tmp_path / "clean", cfg(2))
    killed: list[int] = []
    shared_after: list[bool] = []
    target: list[int] = []  # the worker on this node, which returns its gradients through shared memory

    def kill(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 0:
            target.extend(i for i, info in enumerate(infos(job)) if info.shared_memory)
        if event.round in (2, 5, 8, 11, 14):
            actor = job.pool.actors[target[0]]  # type: ignore[union-attr]
            pid = infos(job)[target[0]].pid  # the incarnation the pool has synced since the last kill
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            if event.round in (2, 8, 14):
                deadline = time.monotonic() + 120
                while actor_record(actor) != ActorRecord("ALIVE", len(killed)):
                    assert time.monotonic() < deadline, "Ray did not restart the worker"
                    time.sleep(0.1)
        if event.round == 17:
            shared_after.extend(i.shared_memory for i in infos(job))

    job = Job(validate_config(cfg(2)), tmp_path / "kill", pool_factory=ray_pool)
    r = job.run(on_round=kill)
    assert r.status == "SUCCEEDED" and len(set(killed)) == 5
    assert r.worker_failures == 5
    assert r.replica_checks.mismatches == 0 and r.bytes.sync > 0
    assert shared_after == [False, False]  # a restarted actor finds no buffer (its name is gone): Ray's replies
    assert np.array_equal(job.state.theta.numpy(), clean.state.theta.numpy())


def test_hung_worker_is_killed_restarted_and_the_job_carries_on(ray_cluster: object, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clean = run_ray(tmp_path / "clean", cfg(2))
    monkeypatch.setenv("HES_WORKER_TIMEOUT_S", "5")  # read when the pool is made
    stopped: list[int] = []

    def freeze(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 5:  # SIGSTOP: the process lives but answers nothing, as a wedged worker would
            pid = infos(job)[1].pid
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    job = Job(validate_config(cfg(2)), tmp_path / "hung", pool_factory=ray_pool)
    with thawed_after(stopped):
        r = job.run(on_round=freeze)
    assert stopped and r.status == "SUCCEEDED" and r.worker_failures == 1  # killed by the pool, restarted
    assert np.array_equal(job.state.theta.numpy(), clean.state.theta.numpy())


def test_localsgd_moves_parameters_every_r_rounds(ray_cluster: object, tmp_path: Path) -> None:
    r = run_ray(tmp_path, cfg(2, mode="localsgd")).result  # type: ignore[attr-defined]
    n, p = 2, r.num_parameters or 0
    assert abs(r.bytes.full.up / (n * r.rounds.full * p * 4) - 1) <= 0.02
    assert r.bytes.stochastic.up / (n * r.rounds.stochastic) <= 32
    # r = 4 over 22 rounds: averages after rounds 3, 7, ..., 19; rounds 20 and 21 step locally, so the job
    # ends by gathering every worker's parameters once more (sync) and saving their average
    r4 = run_ray(tmp_path / "r4", cfg(2, mode="localsgd", r=4)).result  # type: ignore[attr-defined]
    assert r4.rounds.full == 5 and r4.bytes.sync >= n * p * 4


def test_too_many_cpus_is_refused_with_the_field(ray_cluster: object, tmp_path: Path) -> None:
    raw = cfg(3)
    raw["cluster"]["cpus_per_worker"] = 2
    with pytest.raises(ClusterTooSmall, match="cluster.workers: 3 workers x 2.0 CPU"):
        Job(validate_config(raw), tmp_path, pool_factory=ray_pool).run()


def test_coordinator_actor_runs_a_job(ray_cluster: object, tmp_path: Path) -> None:
    handle = start_job(validate_config(cfg(2)), str(tmp_path), job_id="test-actor")
    result = handle.result()
    assert result is not None and result.status == "SUCCEEDED"
    assert handle.progress().progress.fraction == 1.0
    events = handle.events()
    assert {e.kind for e in events} == {"full", "stochastic"}
    assert (tmp_path / "result.json").is_file()


def test_hes_train_on_ray_and_a_failing_job(ray_cluster: object, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from service.cli import main as hes

    f = tmp_path / "job.json"
    f.write_text(json.dumps(cfg(2)))
    assert hes(["train", "--config", str(f), "--set", "train.epochs=1", "--out", str(tmp_path / "ok"), "--quiet"]) == 0
    assert "2 workers" in capsys.readouterr().out
    # More CPUs than the cluster has: the job fails with a message naming the field, nothing hangs.
    code = hes(["train", "--config", str(f), "--set", "cluster.cpus_per_worker=64", "--out", str(tmp_path / "no"),
                "--quiet"])
    assert code == 1
    assert "cluster.workers" in capsys.readouterr().out
    assert json.loads((tmp_path / "no" / "result.json").read_text())["status"] == "FAILED"
