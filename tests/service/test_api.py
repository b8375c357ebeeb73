"""The REST contract against a real `hes serve` (uvicorn + Ray) over real HTTP: jobs, outputs, metrics, CLI."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hes_server import DIGITS_JOB, Server, running, terminal, wait_for_job
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import load

pytestmark = pytest.mark.slow

# name (as the parser reports it: counters without _total) -> type, labels (histograms: besides `le`)
CONTRACT = {
    "hes_rounds": ("counter", {"job", "kind"}),
    "hes_sent_bytes": ("counter", {"job", "kind", "direction"}),
    "hes_round_sent_bytes": ("histogram", {"kind"}),
    "hes_round_duration_seconds": ("histogram", {"kind"}),
    "hes_job_progress_ratio": ("gauge", {"job"}),
    "hes_train_loss": ("gauge", {"job"}),
    "hes_dev_accuracy": ("gauge", {"job"}),
    "hes_stochastic_improvements": ("counter", {"job"}),
    "hes_workers": ("gauge", {"state"}),
    "hes_worker_failures": ("counter", set()),
    "hes_jobs": ("gauge", {"status"}),
}
# a black-box job's series: declared always, with samples only once such a job has run (tests/coordinator/test_blackbox)
BLACKBOX = {
    "hes_eval_return": ("gauge", {"job"}),
    "hes_worker_episodes_per_second": ("gauge", {"job"}),
}
# an allreduce job's (cluster.full_rounds allreduce) ring bytes: declared per job, zero in server mode
RING = {"hes_ring_bytes": ("counter", {"job", "kind", "direction"})}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("api")
    (root / "data" / "empty").mkdir(parents=True)
    s = Server(root / "state", HES_MAX_K="64", HES_MAX_WORKERS_PER_JOB="4",
               HES_ALLOWED_DATA_ROOTS=str(root / "data"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def finished(http: httpx.Client) -> dict[str, Any]:
    """A digits job with 2 workers, submitted and polled to its end."""
    r = http.post("/v1/jobs", json=DIGITS_JOB)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert r.json()["status"] == "PENDING"
    return wait_for_job(http, r.json()["id"], terminal)


def metric_families(http: httpx.Client) -> dict[str, Any]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name.removesuffix("_total").removesuffix("_sum").removesuffix("_count")]
    found = [s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


def test_job_succeeds_with_history_and_model(http: httpx.Client, finished: dict[str, Any],
                                             server: Server) -> None:
    job = finished
    assert job["status"] == "SUCCEEDED", job["message"]
    assert job["progress"] == {"round": 33, "total_rounds": 33, "epoch": 3, "epochs": 3, "fraction": 1.0}
    result = job["result"]
    assert result["num_workers"] == 2 and result["config"]["name"] == "svc-digits"
    assert result["final"]["dev_accuracy"] > 0.5
    assert result == json.loads((server.state_dir / "jobs" / job["id"] / "result.json").read_text())
    history = http.get(f"/v1/jobs/{job['id']}/history").json()
    assert [row["epoch"] for row in history["rows"]] == [1, 2, 3]
    assert set(history["columns"]) == set(history["rows"][0])
    assert history["rows"][-1]["dev_accuracy"] == pytest.approx(result["final"]["dev_accuracy"])
    assert 0 < history["rows"][-1]["bytes_total"] <= result["bytes"]["total"]
    r = http.get(f"/v1/jobs/{job['id']}/model")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    tensors = load(r.content)
    assert tensors["w0"].shape == (16, 64) and tensors["w1"].shape == (10, 16)
    assert sum(t.size for t in tensors.values()) == result["num_parameters"]
    page = http.get("/v1/jobs", params={"status": "SUCCEEDED", "limit": 1}).json()
    assert page["total"] >= 1 and len(page["jobs"]) == 1 and page["limit"] == 1


def test_metrics_carry_the_contract(http: httpx.Client, finished: dict[str, Any]) -> None:
    families = metric_families(http)
    hes = {name: f for name, f in families.items() if name.startswith("hes_")}
    assert set(hes) == set(CONTRACT) | set(BLACKBOX) | set(RING)
    for name, (kind, labels) in (CONTRACT | BLACKBOX | RING).items():
        assert hes[name].type == kind, name
        assert hes[name].samples or name in BLACKBOX, name
        for s in hes[name].samples:
            assert set(s.labels) - {"le"} == labels, (name, s)
    jid, result = finished["id"], finished["result"]
    for kind in ("full", "stochastic"):
        assert sample(families, "hes_rounds_total", job=jid, kind=kind) == result["rounds"][kind] > 0
        for direction in ("up", "down"):
            sent = sample(families, "hes_sent_bytes_total", job=jid, kind=kind, direction=direction)
            assert sent == result["bytes"][kind][direction] > 0
    sync = sum(sample(families, "hes_sent_bytes_total", job=jid, kind="sync", direction=d) for d in ("up", "down"))
    assert sync == result["bytes"]["sync"]
    assert sample(families, "hes_job_progress_ratio", job=jid) == 1.0
    assert sample(families, "hes_dev_accuracy", job=jid) == pytest.approx(result["final"]["dev_accuracy"])
    assert sample(families, "hes_train_loss", job=jid) == pytest.approx(result["final"]["train_loss"])
    assert sample(families, "hes_stochastic_improvements_total", job=jid) == result["improvements"]
    assert sample(families, "hes_jobs", status="SUCCEEDED") >= 1
    assert sample(families, "hes_workers", state="alive") == 0
    assert sample(families, "hes_worker_failures_total") == 0
    # Every stochastic round with 2 workers: (6 B header + 9 B seed down, 21 B up) * 2 = 72 B (messages.py).
    count = sample(families, "hes_round_sent_bytes_count", kind="stochastic")
    assert count >= result["rounds"]["stochastic"]
    assert sample(families, "hes_round_sent_bytes_sum", kind="stochastic") / count == 72
    assert sample(families, "hes_round_duration_seconds_count", kind="full") >= result["rounds"]["full"]


def test_stop_keeps_checkpoint_and_delete_only_when_over(http: httpx.Client, server: Server) -> None:
    r = http.post("/v1/jobs", json={**DIGITS_JOB, "name": "svc-stop", "train": {**DIGITS_JOB["train"], "epochs": 500}})
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    wait_for_job(http, jid, running)
    assert sample(metric_families(http), "hes_workers", state="alive") == 2
    r = http.post("/v1/jobs", json={**DIGITS_JOB, "name": "svc-queued"})  # the first job holds both CPUs
    assert r.status_code == 202
    queued = wait_for_job(http, r.json()["id"], lambda j: j["message"] != "queued", timeout=10)
    assert queued["status"] == "PENDING" and queued["message"].startswith("queued: needs 2 CPUs"), queued
    assert http.post(f"/v1/jobs/{queued['id']}/stop").json()["status"] == "STOPPED"
    assert http.get(f"/v1/jobs/{queued['id']}").json()["message"] == "stopped before it started"
    assert http.delete(f"/v1/jobs/{queued['id']}").status_code == 204
    r = http.delete(f"/v1/jobs/{jid}")
    assert r.status_code == 409 and "job_id" in r.json()["detail"]
    assert http.post(f"/v1/jobs/{jid}/stop").status_code == 202
    job = wait_for_job(http, jid, terminal, timeout=60)
    assert job["status"] == "STOPPED" and "stopped after round" in job["message"]
    assert 0 < job["progress"]["round"] < job["progress"]["total_rounds"]
    out = server.state_dir / "jobs" / jid
    assert (out / "checkpoint.npz").is_file()
    assert json.loads((out / "result.json").read_text())["status"] == "STOPPED"
    assert http.post(f"/v1/jobs/{jid}/stop").status_code == 409
    assert http.get(f"/v1/jobs/{jid}/model").status_code == 409
    assert f'job="{jid}"' in http.get("/metrics").text
    assert http.delete(f"/v1/jobs/{jid}").status_code == 204
    assert http.get(f"/v1/jobs/{jid}").status_code == 404
    assert not out.exists()
    assert f'job="{jid}"' not in http.get("/metrics").text


def stored(server: Server) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{server.state_dir / 'jobs.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT id, status, config FROM jobs ORDER BY id").fetchall()


def bad_inputs(server: Server) -> list[tuple[str, dict[str, Any], str]]:
    j = DIGITS_JOB
    empty = server.state_dir.parent / "data" / "empty"
    return [
        ("unknown key", {**j, "bogus": 1}, "bogus"),
        ("unknown nested key", {**j, "train": {**j["train"], "epoch": 3}}, "train.epoch"),
        ("wrong type", {**j, "hybrid": {**j["hybrid"], "sigma": "big"}}, "hybrid.sigma"),
        ("wrong type list", {**j, "model": {**j["model"], "hidden": "16"}}, "model.hidden"),
        ("r=0", {**j, "hybrid": {**j["hybrid"], "r": 0}}, "hybrid.r"),
        ("k=0", {**j, "hybrid": {**j["hybrid"], "k": 0}}, "hybrid.k"),
        ("k=-1", {**j, "hybrid": {**j["hybrid"], "k": -1}}, "hybrid.k"),
        ("lr<0", {**j, "train": {**j["train"], "lr": -1.0}}, "train.lr"),
        ("epochs=0", {**j, "train": {**j["train"], "epochs": 0}}, "train.epochs"),
        ("batch_size=0", {**j, "train": {**j["train"], "batch_size": 0}}, "train.batch_size"),
        ("batch above the data", {**j, "train": {**j["train"], "batch_size": 5000}}, "train.batch_size"),
        ("huge k", {**j, "hybrid": {**j["hybrid"], "k": 10**9}}, "hybrid.k"),
        ("k over the limit", {**j, "hybrid": {**j["hybrid"], "k": 65}}, "hybrid.k"),
        ("workers over the limit", {**j, "cluster": {**j["cluster"], "workers": 5}}, "cluster.workers"),
        ("more CPUs than the cluster", {**j, "cluster": {**j["cluster"], "workers": 3}}, "cluster.workers"),
        ("CPUs per worker", {**j, "cluster": {**j["cluster"], "cpus_per_worker": 8}}, "cluster.workers"),
        ("GPUs", {**j, "cluster": {**j["cluster"], "gpus_per_worker": 1}}, "cluster.gpus_per_worker"),
        ("path traversal", {**j, "data": {"dataset": "mnist", "path": "../../../../etc"}}, "data.path"),
        ("path outside", {**j, "data": {"dataset": "mnist", "path": "/etc"}}, "data.path"),
        ("path missing", {**j, "data": {"dataset": "mnist", "path": str(empty / "nope")}}, "data.path"),
        ("path without MNIST", {**j, "data": {"dataset": "mnist", "path": str(empty)}}, "data.path"),
        ("path with a NUL byte", {**j, "data": {"dataset": "mnist", "path": "mnist\x00"}}, "data.path"),
        ("path too long", {**j, "data": {"dataset": "mnist", "path": "x" * 5000}}, "data.path"),
        ("not an object", [1, 2], "body"),
    ]


def test_bad_inputs_are_4xx_naming_the_field_and_store_nothing(http: httpx.Client, server: Server) -> None:
    before, jobs_before = stored(server), sorted((server.state_dir / "jobs").iterdir())
    for what, body, field in bad_inputs(server):
        r = http.post("/v1/jobs", json=body)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        assert r.json()["detail"].startswith(field) or f"{field}:" in r.json()["detail"], (what, r.text)
    r = http.post("/v1/jobs", content=b'{"name": "x", ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"].startswith("body: malformed JSON")
    r = http.post("/v1/jobs", content=json.dumps({**DIGITS_JOB, "name": "a" * 70_000}).encode(),
                  headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    chunks = (b"x" * 8192 for _ in range(10))  # no Content-Length: counted while streaming
    r = http.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    for params, field in (({"limit": 0}, "limit"), ({"offset": -1}, "offset"), ({"status": "DONE"}, "status")):
        r = http.get("/v1/jobs", params=params)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), r.text
    assert http.get("/v1/jobs/0000").status_code == 404
    assert http.post("/v1/jobs/0000/stop").status_code == 404
    assert http.delete("/v1/jobs/0000").status_code == 404
    assert stored(server) == before
    assert sorted((server.state_dir / "jobs").iterdir()) == jobs_before


def hes(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--server", server.url],
                          capture_output=True, text=True, timeout=120)


def test_cli_client(server: Server, finished: dict[str, Any], tmp_path: Path) -> None:
    jid = finished["id"]
    out = hes(server, "list", "--status", "SUCCEEDED")
    assert out.returncode == 0 and jid in out.stdout and "SUCCEEDED" in out.stdout
    out = hes(server, "status", jid)
    assert out.returncode == 0 and "SUCCEEDED" in out.stdout and "round 33/33" in out.stdout
    out = hes(server, "watch", jid)
    assert out.returncode == 0 and "status SUCCEEDED" in out.stdout and "100%" in out.stderr
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(DIGITS_JOB))
    out = hes(server, "submit", str(config), "--set", "hybrid.r=0")
    assert out.returncode == 2 and "hybrid.r" in out.stderr
    out = hes(server, "submit", str(config), "--set", "train.epochs=1", "--set", "name=svc-cli", "--watch")
    assert out.returncode == 0, out.stderr
    assert "submitted job" in out.stdout and "status SUCCEEDED" in out.stdout
    assert "epoch=1/1" in out.stderr and "dev_acc=" in out.stderr and "bytes=" in out.stderr
    out = hes(server, "stop", jid)
    assert out.returncode == 2 and "409" in out.stderr
