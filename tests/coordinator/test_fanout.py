"""Fan-out: the pool fetches all the workers' replies together, with the bytes and the bits of one get per worker;
the `make bench` section's arithmetic."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.ray_pool import RayPool, ray_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fanout  # noqa: E402  (bench/ is a folder of scripts, not a package)
from configs import small_config


def tiny(workers: int) -> dict:
    return small_config("fanout", hybrid={"k": 1, "replica_check_every": 3},
                        cluster={"workers": workers, "cpus_per_worker": 0.25, "relays": False})  # direct calls


@pytest.mark.slow
def test_replies_fetched_together_change_no_byte_and_no_bit(ray_cluster: object, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    together = Job(validate_config(tiny(4)), tmp_path / "together", pool_factory=ray_pool)
    r1 = together.run()
    # One blocking get per worker in turn, as the pool did before: nothing prefetched, nobody late.
    monkeypatch.setattr(RayPool, "_gather", lambda self, refs: ({}, set()))
    one_by_one = Job(validate_config(tiny(4)), tmp_path / "one-by-one", pool_factory=ray_pool)
    r2 = one_by_one.run()
    assert np.array_equal(together.state.theta.numpy(), one_by_one.state.theta.numpy())
    assert r1.bytes == r2.bytes
    assert r1.replica_checks.mismatches == 0 and r1.replica_checks.checked > 0
    per_round = r1.bytes.stochastic.up / (r1.rounds.stochastic * 4)
    assert per_round <= 32  # a stochastic round's reply stays a few dozen bytes per worker


def test_slopes_and_verdicts() -> None:
    def point(n: int, relays: bool, cpu: float) -> fanout.Point:
        return fanout.Point(n, relays, n // fanout.NODES, fanout.NODES if relays else n, 1.0 + 0.25 * n, cpu,
                            cpu + 0.1, 0.5, 2.0, 21, 6, 30)

    points = [point(n, relays, 0.5 + (0.02 if relays else 0.25) * n)
              for n in fanout.WORKERS for relays in (False, True)]
    b, a = fanout.slope([float(p.workers) for p in points[::2]], [p.wall_ms for p in points[::2]])
    assert b == pytest.approx(0.25) and a == pytest.approx(1.0)
    text = fanout.render(points)
    assert "**0.020 ms per added worker**" in text and "against 0.250 ms" in text
    assert "**meets** for the thread" in text and "| 32 | relays | 8 | 4 |" in text
    assert "1.00x at 1 per node" in text
    slow = [point(n, relays, 0.5 + 0.1 * n) for n in fanout.WORKERS for relays in (False, True)]
    assert "**misses** for the thread" in fanout.render(slow)
