"""cluster.full_rounds allreduce on a real Ray cluster: the workers sum full rounds in a gloo ring among themselves,
the gradient never reaches the coordinator, the replicas stay bitwise equal, and the job trains as the server
mode does (not to the bit: the ring sums in another order)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from configs import small_config

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.outputs import load_checkpoint
from coordinator.ray_pool import ray_pool
from workers.collective import ring_bytes

pytestmark = pytest.mark.slow


def cfg(mode: str, full_rounds: str, workers: int = 3, **hybrid: object) -> dict:
    return small_config("allreduce", 7, hybrid={"mode": mode, "replica_check_every": 3, **hybrid},
                        train={"epochs": 1},
                        cluster={"workers": workers, "cpus_per_worker": 0.5, "full_rounds": full_rounds})


def run(raw: dict, out: Path) -> tuple[object, np.ndarray]:
    job = Job(validate_config(raw), out, pool_factory=ray_pool)
    result = job.run()
    return result, load_checkpoint(out)[0]


@pytest.mark.parametrize("mode", ["backprop", "hybrid"])
def test_allreduce_trains_as_the_server_does_and_the_gradient_stays_off_the_coordinator(
        ray_cluster: object, tmp_path: Path, mode: str) -> None:
    server, theta_s = run(cfg(mode, "server"), tmp_path / "server")
    ring, theta_r = run(cfg(mode, "allreduce"), tmp_path / "ring")
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
