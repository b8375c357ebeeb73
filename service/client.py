"""HTTP client of `hes serve` for the CLI and the demo: httpx, `--server URL`, token from $HES_API_TOKEN.

    client = Client("http://127.0.0.1:8000", token=None)
    job = client.submit(config_dict); final = watch(client, job.id)   # JobOut, the service's own schema
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import httpx
from tqdm import tqdm

from coordinator.display import postfix
from service.schemas import HistoryOut, JobOut, JobPage

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ServiceError(RuntimeError):
    """The service refused a request or could not be reached; the message says which and why."""


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.server = (server or os.environ.get("HES_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token if token is not None else os.environ.get("HES_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ServiceError(f"cannot reach {self.server}: {err}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(f"{r.status_code} {detail}")
        return r

    def submit(self, config: dict[str, Any]) -> JobOut:
        return JobOut.model_validate(self.request("POST", "/v1/jobs", json=config).json())

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return JobPage.model_validate(self.request("GET", "/v1/jobs", params=params).json())

    def history(self, job_id: str) -> HistoryOut:
        return HistoryOut.model_validate(self.request("GET", f"/v1/jobs/{job_id}/history").json())

    def stop(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.request("POST", f"/v1/jobs/{job_id}/stop").json())

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def watch(client: Client, job_id: str, every: float = 0.5, quiet: bool = False,
          file: TextIO = sys.stderr) -> JobOut:
    """Show a progress bar (rounds) until the job ends; the final job document."""
    job = client.job(job_id)
    bar = tqdm(total=max(1, job.progress.total_rounds), unit="round", desc=f"{job.name} {job.status}",
               disable=quiet, file=file, dynamic_ncols=True, mininterval=0.2)
    try:
        while True:
            p = job.progress
            if p.total_rounds and bar.total != p.total_rounds:
                bar.total = p.total_rounds
            bar.n = p.round
            bar.set_description(f"{job.name} {job.status}", refresh=False)
            bar.set_postfix(postfix(p, job.metrics, job.bytes.total), refresh=True)
            if job.status.terminal:
                return job
            time.sleep(every)
            job = client.job(job_id)
    finally:
        bar.close()
