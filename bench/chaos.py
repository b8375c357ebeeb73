"""`make chaos`: a fault-injection soak of the job service; writes the "Chaos soak" section of BENCHMARKS.md.

Run:  .venv/bin/python bench/chaos.py --out BENCHMARKS.md [--window 120] [--jobs 3] [--epochs 300]
A `ray.cluster_utils.Cluster` of 3 nodes (2 logical CPUs each, loopback, Ray token auth with a token of its own)
and a real `hes serve` joined to it (HES_RAY_ADDRESS, loopback, an API token, a state folder of its own). Three
jobs are submitted over REST at once; for --window seconds a random worker actor process is SIGKILLed about every
10 s, one job's coordinator process is SIGKILLed, the service is SIGKILLed and started again on the same state
folder, and a node that holds workers is removed (a fresh node joins at the end of the window). Then every job is
waited for, the same jobs run again without faults, and the figures go into --out (only this section is
replaced). Everything lives in one temp folder, removed at the end, with the cluster and the service; every wait
is bounded. About 10 minutes on 2 cores. Only processes of this cluster and this service are ever signalled.
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray._private.ray_constants as ray_constants
from common import code_version, machine, num, signed, table
from ray._raylet import Config as RayConfig
from ray.cluster_utils import Cluster
from sections import wrap, write_section

from coordinator.local_ray import LOCAL_ONLY_ENV

TITLE = "Chaos soak"
KEY = "chaos"  # the section's key in BENCHMARKS.md
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
NODE_CPUS = 2
NODES = 3  # the head and two more; the coordinators live on the head (the service's node), workers anywhere
POLL_S = 0.5
NODE_APART_S = 5.0  # no worker kill this close before or after the node removal
LETHAL = ("coordinator kill", "service restart", "node removal")  # faults that can cost a job its coordinator


@dataclass(frozen=True)
class Plan:
    """What the soak does: the jobs, the fault window and when each one-off fault fires (a fraction of the window;
    None: not injected)."""
    jobs: int = 3
    epochs: int = 300
    window_s: float = 120.0
    worker_kill_every_s: tuple[float, float] = (8.0, 12.0)  # the gap between two worker kills, drawn uniformly
    coordinator_kill_at: float | None = 0.2
    service_restart_at: float | None = 0.45
    node_removal_at: float | None = 0.7
    start_timeout_s: float = 180.0  # until every job has done a round
    end_timeout_s: float = 1200.0  # until every job has ended, after the window
    seed: int = 12
    # cluster.full_rounds of job i: full_rounds[i % len]; both ways are soaked (allreduce: the workers' gloo group)
    full_rounds: tuple[str, ...] = ("server", "allreduce")

    def job(self, i: int) -> dict[str, Any]:
        return {"name": f"chaos-{i}", "seed": 100 + i, "data": {"dataset": "digits"},
                "model": {"arch": "mlp", "hidden": [32], "activation": "sigmoid"},
                "train": {"epochs": self.epochs, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
                "hybrid": {"mode": "hybrid", "r": 2, "k": 4, "sigma": 1.0, "combine": "argmin"},
                "cluster": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0,
                            "full_rounds": self.full_rounds[i % len(self.full_rounds)]}}


@dataclass
class Fault:
    kind: str  # worker kill | coordinator kill | service restart | node removal | node added
    at: float  # seconds into the window
    running: list[str]  # jobs running when it fired
    note: str = ""
    hit: list[str] = field(default_factory=list)  # jobs it is known to have hit


@dataclass
class Report:
    plan: Plan
    ids: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> final job document
    twins: dict[str, dict[str, Any]] = field(default_factory=dict)  # chaos job id -> its fault-free twin's document
    records: dict[str, int] = field(default_factory=dict)  # when -> records in the store
    missing: list[str] = field(default_factory=list)  # submitted jobs not in the store at the end
    worker_failures_metric: float = float("nan")  # hes_worker_failures_total after the soak's jobs ended
    worker_failures_after_twins: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)
    workers_on_removed_node: int = 0
    log_lines: list[str] = field(default_factory=list)  # the service's log lines worth quoting


def say(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a process; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            children.setdefault(stat[0], []).append(int(name))
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen - {root}


def _group(pgid: int) -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and (s := _stat(int(n))) is not None and s[1] == pgid]


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


# --- the cluster ----------------------------------------------------------------------------------------------


@contextmanager
def ray_env(token: str, temp: Path) -> Iterator[None]:
    """The environment of this process, its nodes and its service while the soak runs; the old one restored after:
    Ray's token auth with a token of the soak's own; Ray's single-machine mode, so that a driver joining
    127.0.0.1 stays on loopback (Ray otherwise swaps a loopback address for the machine's, where this cluster
    does not listen); RAY_TMPDIR in the temp folder, where Ray writes its "current cluster" file. Ray reads its
    config at import, so it is read again (as `ray.init` does when it turns token auth on)."""
    values = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, LOCAL_ONLY_ENV: "0", "RAY_TMPDIR": str(temp)}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    RayConfig.initialize("")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        RayConfig.initialize("")


def node_args(temp: Path) -> dict[str, Any]:
    return {"num_cpus": NODE_CPUS, "node_ip_address": "127.0.0.1", "temp_dir": str(temp),
            "object_store_memory": 150 << 20}


def start_cluster(temp: Path) -> Cluster:
    (temp / "ray").mkdir()  # $RAY_TMPDIR/ray holds Ray's "current cluster" file
    cluster = Cluster()
    try:
        cluster.add_node(**node_args(temp), include_dashboard=False)
        for _ in range(NODES - 1):
            cluster.add_node(**node_args(temp))
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def actors(cluster: Cluster, cls: str) -> list[tuple[int, Any]]:
    """(pid, node) of every actor process of class `cls` on the cluster's nodes (children of their raylets)."""
    out = []
    for node in cluster.list_all_nodes():
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        out += [(pid, node) for pid in _descendants(raylet) if cls in _cmdline(pid)]
    return out


# --- the service ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`hes serve` in a process group of its own, joined to the cluster; killed and started again on one port."""

    def __init__(self, state: Path, ray_address: str) -> None:
        self.state, self.port = state, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_token = secrets.token_hex(16)
        base = {k: v for k, v in os.environ.items() if not k.startswith("HES_") and k != "RAY_ADDRESS"}
        self.env = {**base, "HES_STATE_DIR": str(state), "HES_API_TOKEN": self.api_token,
                    "HES_RAY_ADDRESS": ray_address}
        self.log = state.parent / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_token}"},
                                 timeout=30)

    def launch(self) -> None:
        hes = Path(sys.executable).with_name("hes")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(hes), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def up(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_up(self, timeout: float = 120) -> float:
        """Seconds until /healthz answers 200; raises when the service exits or does not come up."""
        t0 = time.monotonic()
        while not self.up():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"hes serve did not come up; its log ends:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL the service's process group (not the Ray cluster: its nodes are this process's children)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(30)
        for pid in _group(pgid):  # a member that outlived its leader
            _kill(pid)

    def stop(self) -> None:
        """SIGTERM, then what is left of the group SIGKILLed."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.http.close()

    def jobs(self, ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """The job documents of `ids`; None while the service does not answer."""
        out = {}
        try:
            for jid in ids:
                r = self.http.get(f"/v1/jobs/{jid}")
                if r.status_code != 200:
                    return None
                out[jid] = r.json()
        except httpx.HTTPError:
            return None
        return out

    def submit(self, job: dict[str, Any]) -> str:
        r = self.http.post("/v1/jobs", json=job)
        if r.status_code != 202:
            raise RuntimeError(f"submit refused: {r.status_code} {r.text}")
        return str(r.json()["id"])

    def metric(self, name: str) -> float:
        text = self.http.get("/metrics").text
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else float("nan")

    def records(self) -> set[str]:
        """The job ids in the service's SQLite store, read straight from the file (read-only)."""
        db = sqlite3.connect(f"file:{self.state / 'jobs.db'}?mode=ro", uri=True, timeout=10)
        try:
            return {row[0] for row in db.execute("SELECT id FROM jobs")}
        finally:
            db.close()


def wait_jobs(service: Service, ids: list[str], done: Callable[[dict[str, Any]], bool],
              timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until done(job) for every job, or until `timeout` (the last documents seen either way)."""
    deadline, last = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        docs = service.jobs(ids)
        if docs is not None:
            last = docs
            if all(done(j) for j in docs.values()):
                break
        time.sleep(POLL_S)
    return last


def started(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL or (job["status"] == "RUNNING" and job["progress"]["round"] > 0)


def terminal(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL


# --- the soak -------------------------------------------------------------------------------------------------


class Soak:
    """The fault window: one loop, polling the jobs and firing each fault when it is due."""

    def __init__(self, plan: Plan, cluster: Cluster, service: Service, temp: Path, report: Report) -> None:
        self.plan, self.cluster, self.service, self.temp, self.report = plan, cluster, service, temp, report
        self.rng = random.Random(plan.seed)
        self.docs: dict[str, dict[str, Any]] = {}
        self.restarting_since: float | None = None

    def running(self) -> list[str]:
        return [j for j, d in self.docs.items() if not terminal(d)]

    def run(self) -> None:
        plan, t0 = self.plan, time.monotonic()
        next_kill, last_kill = self.rng.uniform(*plan.worker_kill_every_s), float("-inf")
        once = {"coordinator kill": plan.coordinator_kill_at, "service restart": plan.service_restart_at,
                "node removal": plan.node_removal_at}
        while (t := time.monotonic() - t0) < plan.window_s:
            self.poll(t)
            if self.docs and not self.running():  # every job has ended: nothing left to hit
                break
            if t >= next_kill:
                self.kill_worker(t)
                next_kill, last_kill = t + self.rng.uniform(*plan.worker_kill_every_s), t
            for kind, at in list(once.items()):
                # a node is removed apart from worker kills: a worker restarting on it then would not be counted
                apart = kind != "node removal" or t - last_kill >= NODE_APART_S
                if at is not None and t >= at * plan.window_s and apart:
                    del once[kind]
                    {"coordinator kill": self.kill_coordinator, "service restart": self.restart_service,
                     "node removal": self.remove_node}[kind](t)
                    next_kill = max(next_kill, t + NODE_APART_S) if kind == "node removal" else next_kill
            time.sleep(POLL_S)
        for kind, at in once.items():
            if at is not None:
                self.report.faults.append(Fault(kind, t, [], "not injected: every job had ended"))
        if self.restarting_since is not None:  # the restarted service must be up before the jobs are awaited
            self.service.wait_up()
            self.poll(plan.window_s)
        if any(f.kind == "node removal" and not f.note.startswith("not") for f in self.report.faults):
            self.cluster.add_node(**node_args(self.temp))  # the removed node's replacement: the jobs grow back
            self.report.faults.append(Fault("node added", t, self.running(), "a fresh node joins"))
            say("a fresh node joined")

    def poll(self, t: float) -> None:
        if self.restarting_since is not None:
            if not self.service.up():
                if self.service.proc is not None and self.service.proc.poll() is not None:
                    raise RuntimeError(f"the restarted service exited; its log ends:\n"
                                       f"{self.service.log.read_text()[-3000:]}")
                return
            self.report.seconds["service down"] = time.monotonic() - self.restarting_since
            self.restarting_since = None
            self.report.records["after the service restart"] = len(self.service.records())
            after = self.service.jobs(self.report.ids) or {}
            fault = next(f for f in self.report.faults if f.kind == "service restart")
            lost = [j for j in fault.running if after.get(j, {}).get("restarts") != self.docs[j]["restarts"]]
            fault.note = (f"down {self.report.seconds['service down']:.0f} s; "
                          + (f"restarted from a checkpoint, not reattached: {', '.join(lost)}" if lost
                             else "every running job reattached to its coordinator"))
            say(f"service back after {self.report.seconds['service down']:.0f} s")
        docs = self.service.jobs(self.report.ids)
        if docs is None:
            return
        lethal = [f for f in self.report.faults if f.kind in LETHAL and not f.note.startswith("not injected")]
        for jid, doc in docs.items():  # a job restarted from its checkpoint: charged to the last fault that can
            if lethal and jid in self.docs and doc["restarts"] > self.docs[jid]["restarts"]:
                lethal[-1].hit.append(jid)
        self.docs = docs

    def kill_worker(self, t: float) -> None:
        found = actors(self.cluster, "WorkerActor")
        if not found:
            self.report.faults.append(Fault("worker kill", t, self.running(), "not injected: no worker process"))
            return
        pid, node = self.rng.choice(found)
        if _kill(pid):
            where = "the head" if node is self.cluster.head_node else "a worker node"
            self.report.faults.append(Fault("worker kill", t, self.running(), f"pid {pid} on {where}"))
            say(f"{t:5.1f} s: SIGKILL worker pid {pid}")

    def kill_coordinator(self, t: float) -> None:
        found = actors(self.cluster, "CoordinatorActor")
        fault = Fault("coordinator kill", t, self.running())
        if not found:
            fault.note = "not injected: no coordinator process"
        else:
            pid, _ = self.rng.choice(found)
            _kill(pid)
            fault.note = f"pid {pid}"
            say(f"{t:5.1f} s: SIGKILL coordinator pid {pid}")
        self.report.faults.append(fault)

    def restart_service(self, t: float) -> None:
        self.report.records["before the service restart"] = len(self.service.records())
        self.report.faults.append(Fault("service restart", t, self.running()))
        self.service.kill()
        self.restarting_since = time.monotonic()
        self.service.launch()
        say(f"{t:5.1f} s: SIGKILLed the service; starting it again on the same state folder")

    def remove_node(self, t: float) -> None:
        """Remove the non-head node with workers that holds the fewest coordinators (the coordinators do not all
        stay on the service's node: one on a removed node dies with it, and its job restarts from its checkpoint)."""
        workers = actors(self.cluster, "WorkerActor")
        coordinators = actors(self.cluster, "CoordinatorActor")

        def count(found: list[tuple[int, Any]], node: Any) -> int:
            return sum(n is node for _, n in found)

        candidates = sorted((n for n in self.cluster.worker_nodes if count(workers, n)),
                            key=lambda n: (count(coordinators, n), -count(workers, n)))
        fault = Fault("node removal", t, self.running())
        if not candidates:
            fault.note = "not injected: no node but the head holds workers"
        else:
            node = candidates[0]
            self.report.workers_on_removed_node = count(workers, node)
            self.cluster.remove_node(node, allow_graceful=False)
            fault.note = (f"{self.report.workers_on_removed_node} worker process(es) and {count(coordinators, node)} "
                          "coordinator(s) on it")
            say(f"{t:5.1f} s: removed a node with {fault.note}")
        self.report.faults.append(fault)


def soak(plan: Plan, report: Report) -> None:
    """Cluster, service, the jobs under faults, then their fault-free twins; everything torn down at the end."""
    t_start = time.monotonic()
    ray_secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="hes-chaos-", dir="/tmp", ignore_cleanup_errors=True) as tmp, \
            ray_env(ray_secret, Path(tmp)):
        temp = Path(tmp)  # short: Ray's socket paths are limited
        say("starting a 3-node Ray cluster")
        cluster = start_cluster(temp)
        service = Service(temp / "state", cluster.address)  # Ray's settings from ray_env
        try:
            service.launch()
            service.wait_up()
            say(f"hes serve up at {service.url}; submitting {plan.jobs} jobs")
            report.ids = [service.submit(plan.job(i)) for i in range(plan.jobs)]
            submitted = time.monotonic()
            first = wait_jobs(service, report.ids, started, plan.start_timeout_s)
            if not all(started(j) for j in first.values()):
                raise RuntimeError(f"the jobs did not start within {plan.start_timeout_s:.0f} s: "
                                   + "; ".join(f"{j['status']} {j['message']}" for j in first.values()))
            say(f"every job runs; faults for {plan.window_s:.0f} s")
            t_faults = time.monotonic()
            Soak(plan, cluster, service, temp, report).run()
            report.seconds["faults"] = time.monotonic() - t_faults
            report.jobs = wait_jobs(service, report.ids, terminal, plan.end_timeout_s)
            report.seconds["jobs under faults"] = time.monotonic() - submitted
            report.worker_failures_metric = service.metric("hes_worker_failures_total")
            stored = service.records()
            report.records["at the end"] = len(stored)
            report.missing = [j for j in report.ids if j not in stored]
            report.log_lines = [line for line in service.log.read_text(errors="replace").splitlines()
                                if re.search(r"restart \d+ of|reattached|failed|Traceback", line)][-20:]
            say("the jobs ended: " + ", ".join(j["status"] for j in report.jobs.values()) + "; fault-free twins")
            t_twins = time.monotonic()
            twins = [service.submit(plan.job(i)) for i in range(plan.jobs)]
            done = wait_jobs(service, twins, terminal, plan.end_timeout_s)
            report.twins = {jid: done.get(tid, {}) for jid, tid in zip(report.ids, twins, strict=True)}
            report.seconds["twins"] = time.monotonic() - t_twins
            report.worker_failures_after_twins = service.metric("hes_worker_failures_total")
        finally:
            try:
                service.stop()
            finally:
                cluster.shutdown()
    report.seconds["total"] = time.monotonic() - t_start


# --- the section ----------------------------------------------------------------------------------------------


def soaked(plan: Plan) -> Report:
    """The soak's report (for a caller that runs it in a process of its own: Ray's auth settings stay there)."""
    report = Report(plan)
    soak(plan, report)
    return report


def dev(job: dict[str, Any]) -> float:
    return float(((job.get("result") or {}).get("final") or {}).get("dev_accuracy", float("nan")))


def survived(report: Report, fault: Fault) -> bool:
    """A fault is survived when every job it may have hit ended SUCCEEDED (and, for a service restart, no record
    was lost)."""
    hit = fault.running if fault.kind in ("worker kill", "service restart") else fault.hit or fault.running
    ok = all(report.jobs.get(j, {}).get("status") == "SUCCEEDED" for j in hit)
    return ok and not (fault.kind == "service restart" and report.missing)


def render(report: Report, command: str, started_at: datetime.datetime, version: str, before: str) -> str:
    plan, finished = report.plan, datetime.datetime.now().astimezone()
    injected = [f for f in report.faults if not f.note.startswith("not injected")]
    shrunk = [j for j, d in report.jobs.items() if "ran on" in d.get("message", "")]  # Counters.workers_note
    for f in injected:
        if f.kind == "node removal" and shrunk:
            f.note += f"; then ran on fewer workers: {', '.join(shrunk)}"
    kinds = ["worker kill", "coordinator kill", "service restart", "node removal", "node added"]
    fault_rows = []
    for kind in kinds:
        of_kind = [f for f in report.faults if f.kind == kind]
        if not of_kind:
            continue
        done = [f for f in of_kind if f in injected]
        alive = sum(survived(report, f) for f in done)
        notes = "; ".join(f"at {f.at:.0f} s: {f.note}" + (f"; restarted from its checkpoint: {', '.join(f.hit)}"
                                                           if f.hit else "")
                          for f in of_kind if kind != "worker kill" or f not in done)
        if kind == "worker kill":
            notes = (f"at {', '.join(f'{f.at:.0f}' for f in done)} s" + (f"; {notes}" if notes else "")) if done \
                else notes
        fault_rows.append([kind, len(done), "n/a (recovery)" if kind == "node added" else f"{alive} of {len(done)}",
                           notes])
    job_rows = []
    for i, (jid, job) in enumerate(report.jobs.items()):
        twin = report.twins.get(jid, {})
        a, b = dev(job), dev(twin)
        same = (job.get("result") or {}).get("final") == (twin.get("result") or {}).get("final") and a == a
        spec = plan.job(i)
        job_rows.append([f"{jid} ({spec['name']}, seed {spec['seed']}, full rounds {spec['cluster']['full_rounds']})",
                         job.get("status", "?"),
                         job.get("restarts", 0), (job.get("result") or {}).get("worker_failures", "n/a"),
                         f"{100 * a:.2f}%" if a == a else "n/a",
                         f"{100 * b:.2f}%" if b == b else f"n/a ({twin.get('status', 'not run')})",
                         signed(100 * (a - b), 2, " pts") + (" (bitwise the same model)" if same else ""),
                         _cell(job.get("message", ""))])
    succeeded = sum(j.get("status") == "SUCCEEDED" for j in report.jobs.values())
    twins_ok = sum(t.get("status") == "SUCCEEDED" for t in report.twins.values())
    kills = sum(f.kind == "worker kill" for f in injected)
    # a worker restarting on the node when it went (after a kill) has no WorkerActor process yet; its job shrinks too
    lost = max(report.workers_on_removed_node, len(shrunk))
    per_job = sum(int((j.get("result") or {}).get("worker_failures", 0)) for j in report.jobs.values())
    recs = ", ".join(f"{n} {when}" for when, n in report.records.items())
    s = report.seconds
    figures = [
        ["jobs finished under faults", f"{succeeded} of {len(report.ids)} SUCCEEDED"],
        ["fault-free twins finished", f"{twins_ok} of {len(report.twins)} SUCCEEDED"],
        ["job records lost", f"{len(report.missing)} (records in the store: {recs})"],
        ["`hes_worker_failures_total`", f"{num(report.worker_failures_metric)} after the jobs under faults ended "
         f"({num(report.worker_failures_after_twins)} after the twins); {kills} worker kills + {lost} workers lost "
         f"with the removed node (jobs that then ran on fewer workers) = {kills + lost}; the jobs' own "
         f"`worker_failures` sum to {per_job}"],
        ["wall time", f"{s.get('total', 0):.0f} s in all: faults {s.get('faults', 0):.0f} s, jobs under faults "
         f"{s.get('jobs under faults', 0):.0f} s from submit to the last end, twins {s.get('twins', 0):.0f} s; "
         f"the service was down {s.get('service down', 0):.0f} s"],
    ]
    job = plan.job(0)
    head = (f"## {TITLE}\n\n- command: `{command}`\n"
            f"- ran: {started_at:%Y-%m-%d %H:%M:%S %Z} to {finished:%H:%M:%S} ({s.get('total', 0):.0f} s)\n"
            f"- code: {version}\n- machine at the start: {before}\n- machine at the end: {machine()}\n"
            f"- cluster: `ray.cluster_utils.Cluster`, {NODES} nodes of {NODE_CPUS} logical CPUs on 127.0.0.1, Ray "
            "token auth; a real `hes serve` (loopback, API token, own state folder) joined it with "
            "`HES_RAY_ADDRESS`\n"
            f"- jobs: {plan.jobs} at once over REST, digits, MLP {job['model']['hidden']}, batch "
            f"{job['train']['batch_size']}, {plan.epochs} epochs, H-ES r {job['hybrid']['r']}, k "
            f"{job['hybrid']['k']}, {job['cluster']['workers']} workers each, seeds "
            f"{', '.join(str(plan.job(i)['seed']) for i in range(plan.jobs))}; then the same jobs without faults\n"
            f"- faults for {plan.window_s:.0f} s: a random `WorkerActor` process SIGKILLed every "
            f"{plan.worker_kill_every_s[0]:.0f} to {plan.worker_kill_every_s[1]:.0f} s, one `CoordinatorActor` "
            "process SIGKILLed, the service's process group SIGKILLed and started again on the same state "
            "folder, one node with workers (not the head) removed; a fresh node joins when the window ends\n\n")
    body = "\n\n".join([
        table(["figure", "value"], figures),
        table(["fault", "injected", "survived", "when (s into the window) and what"], fault_rows),
        table(["job", "status", "restarts", "worker failures", "dev accuracy", "fault-free twin", "difference",
               "message"], job_rows),
        summary(report, kills + lost),
    ])
    if report.log_lines:
        body += "\n\nThe service's log (restarts, reattachments, failures):\n\n```\n" + "\n".join(
            _cell(line)[:300] for line in report.log_lines) + "\n```"
    return wrap(KEY, head + body)


def summary(report: Report, expected: int) -> str:
    """The paragraph: what the figures show, and what did not survive."""
    out = []
    failed = {j: d for j, d in report.jobs.items() if d.get("status") != "SUCCEEDED"}
    if not failed and not report.missing:
        n = sum(not f.note.startswith("not injected") and f.kind != "node added" for f in report.faults)
        out.append(f"Every job ended SUCCEEDED under {n} faults and no job record was lost.")
    for j, d in failed.items():
        why = _cell(d.get("message", ""))
        out.append(f"**Job {j} did not survive**: it ended {d.get('status', 'unknown')}: {why}.")
    if report.missing:
        out.append(f"**Records lost**: {', '.join(report.missing)}.")
    same = [j for j in report.jobs if report.twins.get(j) and
            (report.jobs[j].get("result") or {}).get("final") == (report.twins[j].get("result") or {}).get("final")]
    if same:
        out.append(f"{len(same)} of {len(report.jobs)} jobs ended with exactly their fault-free twin's figures: "
                   "a dead worker is restarted and resynced and a dead coordinator's rounds after its checkpoint are "
                   "recomputed, so neither changes the result.")
    differ = [j for j in report.jobs if j not in same and dev(report.twins.get(j, {})) == dev(report.twins.get(j, {}))]
    if differ:
        out.append(f"{', '.join(differ)} differ from their twins: a job that ran on fewer workers while its node was "
                   "gone draws fewer trials per stochastic round (k per live worker) and splits its batches "
                   "differently, a different run of the same method.")
    metric = report.worker_failures_metric
    if metric == metric and metric != expected:
        out.append(f"`hes_worker_failures_total` reads {num(metric)} against {expected} worker deaths injected "
                   "(kills plus workers on the removed node). Workers that die with their coordinator (a removed "
                   "node that held it) are no worker failures: their job restarts from its checkpoint with new "
                   "workers, and its counters from the checkpoint's.")
    elif metric == metric:
        out.append(f"`hes_worker_failures_total` counts every injected worker death ({expected}).")
    return " ".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="BENCHMARKS.md", help="the Markdown file whose Chaos soak section is written")
    parser.add_argument("--window", type=float, default=Plan.window_s, help="seconds of faults")
    parser.add_argument("--jobs", type=int, default=Plan.jobs, help="jobs at once")
    parser.add_argument("--epochs", type=int, default=Plan.epochs, help="epochs of each job")
    args = parser.parse_args(argv)
    plan = Plan(jobs=args.jobs, epochs=args.epochs, window_s=args.window)
    command = shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else ["bench/chaos.py", *argv])])
    started_at, before, version = datetime.datetime.now().astimezone(), machine(), code_version()
    report = Report(plan)
    try:
        soak(plan, report)
        block, ok = render(report, command, started_at, version, before), True
    except Exception:  # the section says the soak failed, with why; the exit status too
        block = wrap(KEY, f"## {TITLE}\n\n- command: `{command}`\n- ran: {started_at:%Y-%m-%d %H:%M:%S %Z}\n"
                          f"- code: {version}\n\n**The soak failed**; the error:\n\n```\n{traceback.format_exc()}```")
        ok = False
    write_section(Path(args.out), KEY, block)
    say(f"wrote {args.out}" + ("" if ok else "; the soak failed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
