"""Public schemas of the REST API (the request schema is the job config itself, coordinator/config.py)."""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from coordinator.documents import (
    ByteCounts,
    JobResult,
    JobStatus,
    ProgressInfo,
    ReplicaChecks,
    RoundCounts,
    Seconds,
    WorkerCounts,
)
from coordinator.outputs import HISTORY_COLUMNS
from service.store import JobRecord

EXAMPLES: dict[str, dict[str, Any]] = {
    "digits": {
        "summary": "Hybrid-ES r=2 on scikit-learn's digits, 2 workers (about a minute)",
        "value": {"name": "digits-demo", "seed": 1, "data": {"dataset": "digits"},
                  "model": {"arch": "mlp", "hidden": [64], "activation": "sigmoid"},
                  "train": {"epochs": 20, "batch_size": 100, "lr": 1.0, "l2": 1.0e-4},
                  "hybrid": {"mode": "hybrid", "r": 2, "k": 8, "sigma": 1.0, "combine": "argmin"},
                  "cluster": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0}},
    },
    "paper-mnist": {
        "summary": "The paper's MLP 784-300-10 on MNIST, H-ES r=2 (data.path inside an allowed root)",
        "value": {"name": "paper-mlp-r2", "seed": 100, "data": {"dataset": "mnist", "dev_size": 10000},
                  "model": {"arch": "mlp", "hidden": [300], "activation": "sigmoid"},
                  "train": {"epochs": 30, "batch_size": 1000, "lr": 5.0, "l2": 1.0e-4},
                  "hybrid": {"mode": "hybrid", "r": 2, "k": 10, "sigma": 1.25, "combine": "argmin"},
                  "cluster": {"workers": 2}},
    },
    "backprop": {
        "summary": "The reference: every round a full backprop round",
        "value": {"name": "digits-backprop", "data": {"dataset": "digits"},
                  "train": {"epochs": 5, "batch_size": 100, "lr": 1.0}, "hybrid": {"mode": "backprop"},
                  "cluster": {"workers": 1}},
    },
}


def finite(doc: Any) -> Any:
    """doc with every NaN or infinity (a diverged loss) as None: JSON has no such numbers."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [finite(v) for v in doc]
    return doc


class TimesOut(BaseModel):
    created: str
    started: str | None = None
    finished: str | None = None
    updated: str


class JobOut(BaseModel):
    """A job as `GET /v1/jobs/{id}` shows it; `result` (the document of result.json) once terminal."""
    id: str
    name: str
    status: JobStatus
    message: str = Field(default="", description="why it waits, failed or stopped")
    config: dict[str, Any]
    progress: ProgressInfo
    metrics: dict[str, float | None] = Field(default_factory=dict, description="latest losses and accuracies "
                                             "(null: not finite, a diverged loss)")
    rounds: RoundCounts = Field(default_factory=RoundCounts, description="full and stochastic rounds done")
    bytes: ByteCounts = Field(default_factory=ByteCounts, description="payload bytes as in result.json")
    seconds: Seconds = Field(default_factory=Seconds)
    improvements: int = 0
    replica_checks: ReplicaChecks = Field(default_factory=ReplicaChecks)
    workers: WorkerCounts = Field(default_factory=WorkerCounts, description="alive and restarting worker actors")
    restarts: int = Field(default=0, description="times the job was restarted from its checkpoint after its "
                                                 "coordinator died (at most HES_JOB_MAX_RESTARTS)")
    times: TimesOut
    result: JobResult | None = None
    links: dict[str, str]

    @classmethod
    def of(cls, rec: JobRecord) -> JobOut:
        p = rec.progress
        return cls(
            id=rec.id, name=rec.name, status=rec.status, message=rec.message, config=rec.config,
            progress=p.progress, metrics=finite(p.metrics), rounds=p.rounds, bytes=p.bytes, seconds=p.seconds,
            improvements=p.improvements, replica_checks=p.replica_checks,
            workers=p.workers if not rec.terminal else WorkerCounts(), restarts=rec.restarts,
            times=TimesOut(created=rec.created_at, started=rec.started_at, finished=rec.finished_at,
                           updated=rec.updated_at),
            result=rec.result if rec.terminal else None,
            links={"self": f"/v1/jobs/{rec.id}", "history": f"/v1/jobs/{rec.id}/history",
                   "model": f"/v1/jobs/{rec.id}/model", "stop": f"/v1/jobs/{rec.id}/stop"},
        )


class JobPage(BaseModel):
    jobs: list[JobOut]
    total: int = Field(description="jobs that match the filter")
    limit: int
    offset: int


class HistoryOut(BaseModel):
    """One row per finished epoch (history.csv as JSON)."""
    id: str
    columns: list[str] = Field(default_factory=lambda: list(HISTORY_COLUMNS))
    rows: list[dict[str, int | float | None]]


class FieldError(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    detail: str = Field(description="what is wrong, starting with the field it is about")
    errors: list[FieldError] | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    ray: dict[str, Any]
    jobs: dict[str, int]
