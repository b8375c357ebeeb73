"""A job whose coordinator dies is restarted from its latest checkpoint and ends as it would have.

The service is killed (SIGKILL) or stopped (SIGTERM) mid-job and started again on the same state folder,
or the job's coordinator actor is killed under a running service: the job resumes from its checkpoint,
recomputes the rounds after it bitwise as they were, and ends SUCCEEDED with the undisturbed run's
accuracy. Past HES_JOB_MAX_RESTARTS it ends FAILED, saying so. A job whose coordinator dies after a stop was requested
ends STOPPED: the request is kept in the store, not lost with the coordinator.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hes_server import DIGITS_JOB, Server, running, service_pids, terminal, wait_for_job

pytestmark = pytest.mark.slow

JOB: dict[str, Any] = {**DIGITS_JOB, "name": "restarts", "train": {**DIGITS_JOB["train"], "epochs": 30}}
LONG_JOB: dict[str, Any] = {**DIGITS_JOB, "name": "restarts-long", "train": {**DIGITS_JOB["train"], "epochs": 2000}}


def submit(c: httpx.Client, job: dict[str, Any]) -> str:
    r = c.post("/v1/jobs", json=job)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def past_epoch(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda j: running(j) and j["progress"]["epoch"] >= n


def group_pids(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout.split()
    return [int(p) for p, g in zip(out[::2], out[1::2], strict=True) if int(g) == pgid]


def coordinator_pid(server: Server) -> int:
    """The job's coordinator actor process (Ray names it after the actor class)."""
    assert server.proc is not None
    for _ in range(100):
        for pid in service_pids(server.proc.pid):
            try:
                if "CoordinatorActor" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    return pid
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError("no CoordinatorActor process among the service's processes")


def end_service(server: Server, sig: signal.Signals) -> None:
    """SIGKILL to the service's process group, or SIGTERM to the service (a graceful stop); then whatever is left
    of the group goes too, so that the next service is alone."""
    assert server.proc is not None
    pgid = server.proc.pid
    os.killpg(pgid, sig) if sig == signal.SIGKILL else server.proc.send_signal(sig)
    server.proc.wait(60)
    for pid in group_pids(pgid):
        os.kill(pid, signal.SIGKILL)


def test_service_killed_or_stopped_mid_job_resumes_to_the_same_result(make_server: Callable[..., Server],
                                                                     tmp_path: Path) -> None:
    """SIGKILL, then (on the next service) SIGTERM, each in the middle of a job; both jobs end as the undisturbed
    one does."""
    state = tmp_path / "state"
    server = make_server(state)
    with server.client() as c:
        reference = wait_for_job(c, submit(c, JOB), terminal)
        assert reference["status"] == "SUCCEEDED", reference["message"]
        jid = submit(c, JOB)
        wait_for_job(c, jid, past_epoch(3))
    for sig in (signal.SIGKILL, signal.SIGTERM):
        end_service(server, sig)
        server = make_server(state)
        with server.client() as c:
            job = wait_for_job(c, jid, terminal, timeout=300)
            if sig == signal.SIGKILL:  # the next job, for the SIGTERM
                jid = submit(c, JOB)
                wait_for_job(c, jid, past_epoch(3))
        assert job["status"] == "SUCCEEDED", (sig.name, job["message"])
        assert job["restarts"] == 1 and "restarted 1 time from its checkpoint" in job["message"], sig.name
        assert job["result"]["restarts"] == 1
        # the rounds after the checkpoint are recomputed bitwise as they were: the same model, the same figures
        assert job["result"]["final"] == reference["result"]["final"], sig.name
        assert job["progress"]["round"] == reference["progress"]["round"]


def test_killed_coordinator_restarts_until_the_limit(make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server(tmp_path / "state", HES_JOB_MAX_RESTARTS="1")
    with server.client() as c:
        jid = submit(c, LONG_JOB)
        wait_for_job(c, jid, past_epoch(1))
        os.kill(coordinator_pid(server), signal.SIGKILL)
        again = wait_for_job(c, jid, lambda j: j["restarts"] == 1 and running(j)
                             and not j["message"].startswith("restarting"), timeout=180)
        assert "restarted 1 time" in again["message"]
        os.kill(coordinator_pid(server), signal.SIGKILL)
        failed = wait_for_job(c, jid, terminal, timeout=180)
    assert failed["status"] == "FAILED"
    assert "HES_JOB_MAX_RESTARTS=1" in failed["message"] and "coordinator died" in failed["message"]
    assert "checkpoint" in failed["message"]  # where to resume it by hand


def test_a_stop_requested_before_the_coordinator_dies_ends_the_job_stopped(make_server: Callable[..., Server],
                                                                          tmp_path: Path) -> None:
    """The coordinator is frozen (SIGSTOP) so that it never takes the request, then killed: no restart."""
    server = make_server(tmp_path / "state")
    with server.client() as c:
        jid = submit(c, LONG_JOB)
        wait_for_job(c, jid, past_epoch(1))
        pid = coordinator_pid(server)
        os.kill(pid, signal.SIGSTOP)
        try:
            r = c.post(f"/v1/jobs/{jid}/stop")
            assert r.status_code == 202, r.text
            assert r.json()["message"].startswith("stop requested")
        finally:
            os.kill(pid, signal.SIGKILL)
        job = wait_for_job(c, jid, terminal, timeout=120)
    assert job["status"] == "STOPPED", job["message"]
    assert job["restarts"] == 0 and "after the stop was requested" in job["message"]
    assert "checkpoint is kept" in job["message"] and job["result"]["status"] == "STOPPED"
