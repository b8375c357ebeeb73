"""bench/common.py ObservedPool, the pool wrapper of the fanout and wire sections: every Pool member reaches the
inner pool, the hooks see every round in order with its results and bytes, and the job's bits are unchanged."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.accounting import Counters, RoundBytes
from coordinator.config import JobConfig, validate_config
from coordinator.job import Job, local_pool
from coordinator.parts import JobParts
from coordinator.rounds import Pool
from workers.messages import Result, Task

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from common import ObservedPool  # noqa: E402  (bench/ is a folder of scripts, not a package)
from configs import small_config  # noqa: E402


class Recording(ObservedPool[Pool]):
    """Records the hooks' calls: (hook, round) in order, and each round's results and bytes."""

    def __init__(self, inner: Pool, fail_closing: bool = False) -> None:
        super().__init__(inner)
        self.calls: list[tuple[str, int]] = []
        self.rounds: list[tuple[int, int, int]] = []  # round, results, payload bytes
        self.fail_closing = fail_closing

    def sending(self, task: Task) -> Any:
        self.calls.append(("sending", task.round))
        return ("sent", task.round)

    def collecting(self, task: Task, mark: Any) -> Any:
        assert mark == ("sent", task.round)  # what sending returned
        self.calls.append(("collecting", task.round))
        return ("collecting", task.round)

    def collected(self, task: Task, mark: Any, results: list[Result], rb: RoundBytes) -> None:
        assert mark == ("collecting", task.round)
        self.rounds.append((task.round, len(results), rb.total))

    def closing(self) -> None:
        self.calls.append(("closing", -1))
        if self.fail_closing:
            raise RuntimeError("closing failed")


def config() -> JobConfig:
    # two replicas through the wire encoding, so every round has results and bytes to count
    return validate_config(small_config("observed", cluster={"workers": 2, "backend": "local"}))


def test_every_round_is_observed_and_the_job_is_unchanged(tmp_path: Path) -> None:
    pools: list[Recording] = []

    def factory(cfg: JobConfig, parts: JobParts, counters: Counters) -> Recording:
        pools.append(Recording(local_pool(cfg, parts, counters)))
        return pools[-1]

    observed = Job(config(), tmp_path / "observed", pool_factory=factory)
    r1 = observed.run()
    plain = Job(config(), tmp_path / "plain")
    r2 = plain.run()
    assert np.array_equal(observed.state.theta.numpy(), plain.state.theta.numpy())
    assert r1.bytes == r2.bytes and r1.rounds == r2.rounds

    (pool,) = pools
    n = r1.rounds.full + r1.rounds.stochastic + 1  # and the flush (RoundLoop.flush: pool.round)
    assert [t for t, _, _ in pool.rounds] == list(range(n))
    assert all(results == 2 for _, results, _ in pool.rounds)
    assert sum(b for _, _, b in pool.rounds) == r1.bytes.total > 0
    assert pool.calls == [(hook, t) for t in range(n) for hook in ("sending", "collecting")] + [("closing", -1)]
    assert (pool.n_workers, pool.overlaps, pool.alive, pool.restarting) == (2, False, 2, 0)


def test_the_inner_pool_closes_when_the_closing_hook_fails(tmp_path: Path) -> None:
    closed: list[bool] = []
    cfg = config()
    job = Job(cfg, tmp_path / "job")
    inner = local_pool(cfg, job.parts, Counters())
    inner.close = lambda: closed.append(True)  # type: ignore[method-assign]
    pool = Recording(inner, fail_closing=True)
    with pytest.raises(RuntimeError, match="closing failed"):
        pool.close()
    assert closed == [True]
