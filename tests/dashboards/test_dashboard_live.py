"""Every dashboard query against real Prometheus servers that scraped a real `hes serve` during a real job.

Two Prometheus servers scrape the service: one with the shipped scrape job (deploy/prometheus, which keeps
the service's `job` label), one with a default scrape job (Prometheus renames it `exported_job`).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from promql import free_port, hes_scrape_job, load_dashboard, panel_targets, prometheus, query, substitute

from service.cli import main
from service.history import rows_from
from service.report import plot_history

pytestmark = pytest.mark.slow

TOKEN = "dashboard-live-token"
JOB = {"name": "dashboard-live", "seed": 5, "data": {"dataset": "digits"},
       "model": {"arch": "mlp", "hidden": [16], "activation": "sigmoid"},
       "train": {"epochs": 3, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
       "hybrid": {"mode": "hybrid", "r": 2, "k": 4, "sigma": 1.0, "combine": "argmin"},
       "cluster": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0}}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Live:
    service: str
    job: dict[str, Any]
    prometheus: dict[str, str]  # "shipped" | "default" -> base URL


def values(answer: dict[str, Any]) -> list[float]:
    return [float(r["value"][1]) for r in answer["data"]["result"]]


def wait_for(what: str, ready: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not shutil.which("prometheus"):
        pytest.skip("no prometheus binary (Debian package `prometheus`; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("live")
    port = free_port()
    service = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "HES_RAY_ADDRESS")}
    env.update(HES_API_TOKEN=TOKEN, HES_STATE_DIR=str(tmp / "state"), HES_RAY_NUM_CPUS="2")
    with (tmp / "serve.log").open("w") as log:
        serve = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port",
                                  str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    target = f"127.0.0.1:{port}"
    try:
        with prometheus(tmp / "shipped", [hes_scrape_job(target)]) as shipped, \
                prometheus(tmp / "default", [{"job_name": "hes", "static_configs": [{"targets": [target]}]}]) as dflt:
            wait_for("hes serve", lambda: healthy(service) or serve.poll() is not None, 180)
            assert serve.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
                submitted = c.post("/v1/jobs", json=JOB)
                assert submitted.status_code == 202, submitted.text
                path = f"/v1/jobs/{submitted.json()['id']}"
                wait_for("the job", lambda: c.get(path).json()["status"] in TERMINAL, 300)
                job = c.get(path).json()
            assert job["status"] == "SUCCEEDED", job["message"]
            (progress,) = [t["expr"] for name, t in panel_targets(load_dashboard()) if name == "Job progress"]
            done = f"({substitute(progress, job['id'])}) == 1"
            for url in (shipped, dflt):
                wait_for("the last scrape", lambda url=url: values(query(url, done)), 60)
            time.sleep(3)  # a few more scrapes after the job's last update
            yield Live(service, job, {"shipped": shipped, "default": dflt})
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)


@pytest.mark.parametrize("scrape", ["shipped", "default"])
def test_every_panel_query_returns_data(live: Live, scrape: str) -> None:
    failures = []
    for title, target in panel_targets(load_dashboard()):
        answer = query(live.prometheus[scrape], substitute(target["expr"], live.job["id"]))
        if answer["status"] != "success":
            failures.append(f"{title} {target['refId']}: {answer.get('error')}")
        elif not any(math.isfinite(v) for v in values(answer)):
            failures.append(f"{title} {target['refId']}: no finite value in {answer['data']['result']}")
    assert not failures, "\n".join(failures)


def test_job_variable_lists_the_job(live: Live) -> None:
    url = live.prometheus["shipped"] + "/api/v1/label/job/values?" + urllib.parse.urlencode(
        {"match[]": "hes_job_progress_ratio"})
    with urllib.request.urlopen(url, timeout=30) as r:
        assert live.job["id"] in httpx.Response(200, content=r.read()).json()["data"]


def panel_value(live: Live, title: str, ref: str = "A") -> list[float]:
    (target,) = [t for name, t in panel_targets(load_dashboard()) if name == title and t["refId"] == ref]
    return values(query(live.prometheus["shipped"], substitute(target["expr"], live.job["id"])))


def test_panels_show_the_jobs_numbers(live: Live) -> None:
    result = live.job["result"]
    assert panel_value(live, "Job progress") == [1.0]
    assert panel_value(live, "Cumulative bytes sent vs. every round full") == [result["bytes"]["total"]]
    full = result["bytes"]["full"]["up"] + result["bytes"]["full"]["down"]
    baseline = (result["rounds"]["full"] + result["rounds"]["stochastic"]) * full / result["rounds"]["full"]
    assert panel_value(live, "Cumulative bytes sent vs. every round full", "B") == [pytest.approx(baseline)]
    (saved,) = panel_value(live, "Bytes saved vs. every round full")
    assert saved == pytest.approx(1 - result["bytes"]["total"] / baseline) and 0.3 < saved < 0.6  # r = 2
    assert panel_value(live, "Dev accuracy") == [pytest.approx(result["final"]["dev_accuracy"])]


def test_hes_report_of_a_service_job(live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HES_API_TOKEN", TOKEN)
    assert main(["report", live.job["id"], "--server", live.service, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.png" for n in ("loss", "accuracy", "bytes_per_round", "cumulative_bytes"))
    assert all(p.stat().st_size > 10_000 for p in tmp_path.iterdir())
    history = httpx.get(f"{live.service}/v1/jobs/{live.job['id']}/history",
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()["rows"]
    figs = plot_history(rows_from(history, "service"), "live")
    sent = figs["cumulative_bytes"].axes[0].get_lines()[1]
    assert list(sent.get_ydata()) == [0.0] + [float(r["bytes_total"]) for r in history]
    assert history[-1]["bytes_total"] > 0
