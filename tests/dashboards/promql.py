"""Helpers shared by the dashboard tests: the dashboard's queries, Grafana's variable substitution, and a
real Prometheus server to run them against."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "hybrid-es.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel, rows' nested panels included."""
    out: list[tuple[str, dict[str, Any]]] = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out.extend((inner["title"], t) for t in inner.get("targets", []))
    return out


def substitute(expr: str, job: str, rate_interval: str = "1m") -> str:
    """The query Grafana sends for `expr` with the `job` variable set to one job id."""
    expr = re.sub(r"\$__rate_interval|\$\{__rate_interval\}", rate_interval, expr)
    return re.sub(r"\$job\b|\$\{job\}", job, expr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hes_scrape_job(target: str) -> dict[str, Any]:
    """The shipped `hes` scrape job (deploy/prometheus/prometheus.yml), pointed at `target`."""
    shipped = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "hes")
    return {**job, "static_configs": [{"targets": [target]}]}


@contextmanager
def prometheus(folder: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[str]:
    """A real Prometheus on a free loopback port scraping every second; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "scrape_configs": scrape_configs}))
    port = free_port()
    with (folder / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, promql: str) -> dict[str, Any]:
    """Prometheus's answer to an instant query: {"status": ..., "data"| "error": ...}, errors included."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                    timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:  # 400 for a query that does not parse, with the reason
        return json.loads(err.read())
