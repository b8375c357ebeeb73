"""Helpers of the service tests: a real `hes serve` (uvicorn + its own Ray) in a subprocess on a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from configs import small_config

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DIGITS_JOB: dict[str, Any] = small_config("svc-digits", train={"epochs": 3}, hybrid={"k": 4},
                                          cluster={"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`hes serve` as a user runs it, in a process group of its own (uvicorn and the Ray it starts)."""

    def __init__(self, state_dir: Path, **env: str) -> None:
        self.state_dir, self.port = state_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("HES_") and k not in ("RAY_ADDRESS", "HES_RAY_ADDRESS")}
        self.env = {**base, "HES_STATE_DIR": str(state_dir), "HES_RAY_NUM_CPUS": "2", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"serve-{self.port}.log"

    def start(self, timeout: float = 120) -> Server:
        hes = Path(sys.executable).with_name("hes")
        cmd = [str(hes)] if hes.exists() else [sys.executable, "-m", "service.cli"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*cmd, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hes serve did not come up; log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[3])


def service_pids(root: int) -> set[int]:
    """The service process, its descendants and everything in its session (Ray daemonises some processes)."""
    parents: dict[int, list[int]] = {}
    same_session = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _proc_stat(int(name))) is not None:
            parents.setdefault(stat[0], []).append(int(name))
            if stat[1] == root:
                same_session.add(int(name))
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += parents.get(pid, [])
    return seen | same_session


def wait_for_job(client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool],
                 timeout: float = 180) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until done(job); the job document."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}: {job['message']}"
        time.sleep(0.3)


def terminal(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL


def running(job: dict[str, Any]) -> bool:
    assert job["status"] not in TERMINAL, job
    return job["status"] == "RUNNING" and job["progress"]["round"] > 0
