"""`make demo`: the service end to end on this machine, in about a minute.

Starts `hes serve` (a local Ray and the REST API) on a free loopback port as a subprocess, submits the
`digits-demo` preset (scikit-learn's digits, Hybrid-ES r=2 on 2 Ray workers), shows its progress bar,
prints the result and where the metrics and API docs are served, then shuts everything down.

    python -m service.demo
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coordinator.config import read_config_file, validate_config
from coordinator.display import fmt_bytes
from service.cli import end_lines, exit_status
from service.client import Client, ServiceError, watch
from service.schemas import JobOut

PRESET = "digits-demo"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(port: int, state: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HES_STATE_DIR=str(state))
    env.setdefault("HES_RAY_NUM_CPUS", "2")  # the preset's 2 workers x 1 CPU, even on a 1-core machine
    log = (state / "serve.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(client: Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not client.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise ServiceError(f"the service did not come up (exit code {proc.poll()}); its log:\n{tail}")
        time.sleep(0.5)


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the service's process group (uvicorn and the Ray it started), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def newcomer_lines(job: JobOut) -> list[str]:
    """What the demo trained, how well, what a seed-only round moved against a full one, and what to try next."""
    r = job.result
    if r is None or not r.final:
        return [f"the job ended {job.status}: {job.message or 'no result'}"]
    cfg, f, b, n = validate_config(r.config), r.final, r.bytes, max(1, r.num_workers)
    model = f"{cfg.model.arch} {cfg.model.hidden}" if cfg.model.arch == "mlp" else cfg.model.arch
    lines = [f"trained   a {model} on {cfg.data.dataset} ({r.num_parameters or 0:,} parameters) with Hybrid-ES "
             f"r={cfg.hybrid.r}, k={cfg.hybrid.k} on {r.num_workers} Ray workers"]
    accuracy = ", ".join(f"{split} {100 * v:.2f}%" for split in ("dev", "test")
                         if (v := f.get(f"{split}_accuracy")) is not None)
    lines.append(f"reached   {accuracy} accuracy in {r.seconds.total:.0f} s")
    if r.rounds.full and r.rounds.stochastic:
        full = (b.full.up + b.full.down) / r.rounds.full / n
        seed_only = (b.stochastic.up + b.stochastic.down) / r.rounds.stochastic / n
        lines.append(f"moved     {fmt_bytes(seed_only)} per worker in a seed-only round against {fmt_bytes(full)} in a "
                     f"full round ({full / max(seed_only, 1):,.0f}x less)")
    lines.append("try next  .venv/bin/hes train --config digits-demo --set hybrid.r=4 --out runs/r4   "
                 "(more seed-only rounds; .venv/bin/hes presets lists the paper's)")
    return lines


def main() -> int:
    port, state = free_port(), Path(tempfile.mkdtemp(prefix="hes-demo-"))
    url = f"http://127.0.0.1:{port}"
    print(f"[1/4] starting a local Ray and the service on {url} (log: {state / 'serve.log'})", flush=True)
    started = time.monotonic()
    proc = start_service(port, state)
    client = Client(url)
    try:
        wait_healthy(client, proc, state / "serve.log")
        print(f"      up in {time.monotonic() - started:.0f} s", flush=True)
        job = client.submit(read_config_file(PRESET))
        print(f"[2/4] submitted preset {PRESET}: job {job.id}, {job.config['cluster']['workers']} workers, "
              f"{job.progress.total_rounds} rounds ({url}/v1/jobs/{job.id})", flush=True)
        print("[3/4] training (round, epoch, last round's loss, dev accuracy, payload bytes)", flush=True)
        job = watch(client, job.id)
        print("[4/4] result", flush=True)
        for line in newcomer_lines(job) + [""] + end_lines(job):
            print(f"      {line}".rstrip())
        metrics = client.request("GET", "/metrics").text
        print(f"      metrics  {url}/metrics, e.g.")
        for line in metrics.splitlines():
            if line.startswith(("hes_rounds_total{", "hes_sent_bytes_total{")) and job.id in line:
                print(f"        {line}")
        print(f"      API docs {url}/docs")
        print(f"      outputs  {state / 'jobs' / job.id}/ (result.json, history.csv, model.safetensors)")
        return exit_status(job.status)
    except ServiceError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
        stop_service(proc)
        print(f"service stopped; the demo took {time.monotonic() - started:.0f} s (serve it yourself: hes serve)")


if __name__ == "__main__":
    sys.exit(main())
