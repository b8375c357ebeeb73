"""A diverged job through `hes serve` (uvicorn + Ray): FAILED with the divergence message, no model (409),
counted by hes_jobs{status="FAILED"}; a string or boolean where the config wants a number is a 422."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hes_server import DIGITS_JOB, Server, terminal, wait_for_job
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def jobs_gauge(text: str, status: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) if f.name == "hes_jobs"
                for s in f.samples if s.labels == {"status": status})


def test_a_diverged_job_is_failed_in_the_service(make_server: Callable[..., Server]) -> None:
    server = make_server()
    job_cfg: dict[str, Any] = {**DIGITS_JOB, "train": {**DIGITS_JOB["train"], "epochs": 1, "lr": 1e308},
                               "cluster": {**DIGITS_JOB["cluster"], "workers": 1}}
    with server.client() as http:
        for bad, field in (({"epochs": "2"}, "train.epochs"), ({"batch_size": True}, "train.batch_size"),
                           ({"lr": "0.5"}, "train.lr")):
            r = http.post("/v1/jobs", json={**job_cfg, "train": {**job_cfg["train"], **bad}})
            assert r.status_code == 422 and field in r.text, r.text
        r = http.post("/v1/jobs", json=job_cfg)
        assert r.status_code == 202, r.text
        job = wait_for_job(http, r.json()["id"], terminal)
        message = ("diverged at round 2 of 11: the cost of every trial is nan "
                   "(lower train.lr, now 1e+308, or hybrid.sigma, now 1)")
        assert (job["status"], job["message"]) == ("FAILED", message)
        assert job["result"]["status"] == "FAILED" and job["result"]["message"] == message
        assert http.get(f"/v1/jobs/{job['id']}/model").status_code == 409
        deadline = time.monotonic() + 30  # the gauge follows the store on the runner's next tick
        while jobs_gauge(http.get("/metrics").text, "FAILED") != 1:
            assert time.monotonic() < deadline, "hes_jobs{status=FAILED} never counted the job"
            time.sleep(0.3)
        assert jobs_gauge(http.get("/metrics").text, "SUCCEEDED") == 0
