"""Stop and delete answer while the runner waits for a coordinator: no Ray call is made under its lock."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from configs import small_config

from coordinator.actor import JobHandle
from coordinator.documents import JobStatus, ProgressInfo, Snapshot
from service.metrics import Metrics
from service.runner import Runner
from service.settings import Settings
from service.store import JobRecord, Store

pytestmark = pytest.mark.slow

JOB: dict[str, Any] = small_config("lock", 1, train={"epochs": 200}, cluster={"workers": 1, "cpus_per_worker": 1})


class HeldHandle(JobHandle):
    """The job's real handle, whose progress call waits until the test lets it go (a slow coordinator)."""

    def __init__(self, real: JobHandle) -> None:
        super().__init__(real.actor, real.run_ref)
        self.entered, self.release = threading.Event(), threading.Event()

    def progress(self, timeout: float = 60) -> Snapshot:
        self.entered.set()
        self.release.wait(120)
        return super().progress(timeout)


def test_stop_and_delete_do_not_wait_for_a_poll(ray_cluster: object, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", max_concurrent_jobs=2)
    store = Store(tmp_path / "jobs.db")
    runner = Runner(settings, store, Metrics())
    store.insert(JobRecord(id="done", name="done", status=JobStatus.SUCCEEDED, config=JOB,
                           out_dir=str(tmp_path / "done")))
    store.insert(JobRecord(id="long", name="long", status=JobStatus.PENDING, config=JOB, out_dir=str(tmp_path / "long"),
                           progress=Snapshot(progress=ProgressInfo(total_rounds=2800, epochs=200))))
    runner.tick()
    assert "long" in runner.handles
    held = runner.handles["long"] = HeldHandle(runner.handles["long"])

    poller = threading.Thread(target=runner.tick)
    poller.start()
    assert held.entered.wait(60), "the poll never reached the coordinator"
    answers: dict[str, Any] = {}
    requests = [threading.Thread(target=lambda: answers.update(stop=runner.stop("long"))),
                threading.Thread(target=lambda: answers.update(forget=runner.forget("done")))]
    for t in requests:
        t.start()
    for t in requests:
        t.join(30)
    blocked = [t for t in requests if t.is_alive()]
    held.release.set()
    poller.join(120)
    assert not blocked, "stop or delete waited for the poll of another coordinator"
    assert answers["forget"] is True and store.get("done") is None
    assert answers["stop"] is not None and "stop requested" in answers["stop"].message

    for _ in range(600):
        rec = store.get("long")
        if rec is not None and rec.terminal:
            break
        runner.tick()
        threading.Event().wait(0.2)
    rec = store.get("long")
    assert rec is not None and rec.status == "STOPPED", rec
    assert not runner.handles
    store.close()
