"""Jobs survive a service restart: reattached while their coordinator lives, restarted from their checkpoint
once it is gone.

The coordinators only outlive the service on a Ray cluster the service joined (HES_RAY_ADDRESS), so the
test starts a Ray head of its own (`ray start --head --block`, private temp dir and port) and stops it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hes_server import DIGITS_JOB, Server, free_port, running, wait_for_job

pytestmark = pytest.mark.slow

LONG_JOB = {**DIGITS_JOB, "name": "svc-restart", "train": {**DIGITS_JOB["train"], "epochs": 2000}}


class RayHead:
    """A 2-CPU Ray head (`ray start --head --block`) in a process group of its own."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="hes-ray-", dir="/tmp")  # short: Ray's socket paths are limited
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_AUTH_MODE"] = "token"
        log = Path(self.temp) / "head.log"
        ray = Path(sys.executable).with_name("ray")
        with log.open("wb") as out:
            self.proc = subprocess.Popen([str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                          "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                                          "--disable-usage-stats", f"--temp-dir={self.temp}"],
                                         env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGKILL the group: `ray start --block` and every Ray process it started (jobs' actors too)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture()
def ray_head() -> Iterator[RayHead]:
    head = RayHead()
    yield head
    head.stop()


def test_restart_reattaches_then_restarts_when_the_coordinator_is_gone(
        make_server: Callable[..., Server], ray_head: RayHead, tmp_path: Path) -> None:
    state = tmp_path / "state"
    joined = {"HES_RAY_ADDRESS": ray_head.address, "RAY_AUTH_MODE": "token"}
    first = make_server(state, **joined)
    with first.client() as c:
        r = c.post("/v1/jobs", json=LONG_JOB)
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        before = wait_for_job(c, jid, running)
    first.stop()

    second = make_server(state, **joined)
    with second.client() as c:
        job = c.get(f"/v1/jobs/{jid}").json()
        assert job["status"] == "RUNNING" and job["config"] == before["config"]
        later = wait_for_job(c, jid, lambda j: running(j) and j["progress"]["epoch"] >= 1, timeout=120)
        assert later["progress"]["round"] > before["progress"]["round"]  # the same run, still going
        assert later["restarts"] == 0
    assert f"reattached to job {jid}" in second.log.read_text()
    second.stop()
    ray_head.stop()  # the cluster, and the job's coordinator with it, is gone

    third = make_server(state)  # a Ray of its own: the job starts again there from its last checkpoint
    with third.client() as c:
        job = c.get(f"/v1/jobs/{jid}").json()
        assert job["status"] == "RUNNING" and job["restarts"] == 1, job
        assert "restart 1 of 3" in job["message"] and "coordinator is gone" in job["message"]
        again = wait_for_job(c, jid, lambda j: running(j) and not j["message"].startswith("restarting"), timeout=120)
        per_epoch = again["progress"]["total_rounds"] // again["progress"]["epochs"]
        assert again["progress"]["round"] >= later["progress"]["epoch"] * per_epoch  # from its checkpoint
        assert "restarted 1 time" in again["message"] and again["config"] == before["config"]
        assert c.post(f"/v1/jobs/{jid}/stop").status_code == 202
        stopped = wait_for_job(c, jid, lambda j: j["status"] in ("STOPPED", "FAILED", "SUCCEEDED"))
        assert stopped["status"] == "STOPPED" and stopped["result"]["restarts"] == 1
        assert c.delete(f"/v1/jobs/{jid}").status_code == 204
