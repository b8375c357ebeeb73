"""The jobs resource: submit, list, show, history, model, stop, delete (DESIGN.md's REST table)."""
from __future__ import annotations

import math
import secrets
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from coordinator.config import JobConfig
from coordinator.documents import JobStatus, ProgressInfo, Snapshot
from service.history import read_records
from service.metrics import Metrics
from service.runner import Runner
from service.schemas import EXAMPLES, ErrorOut, HistoryOut, JobOut, JobPage, finite
from service.settings import Settings
from service.store import JobRecord, Store
from service.validation import AdmissionGate, Busy, Refused, admit


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_runner(request: Request) -> Runner:
    return request.app.state.runner


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


_gate_lock = threading.Lock()


def get_admissions(request: Request) -> AdmissionGate:
    """The app's one admission gate, made on first use from its settings."""
    state = request.app.state
    with _gate_lock:
        if getattr(state, "admissions", None) is None:
            settings: Settings = state.settings
            state.admissions = AdmissionGate(settings.max_parallel_admissions, settings.admission_wait_seconds)
        return state.admissions


StoreDep = Annotated[Store, Depends(get_store)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
AdmissionsDep = Annotated[AdmissionGate, Depends(get_admissions)]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong bearer token (when HES_API_TOKEN is set)"},
    404: {"model": ErrorOut, "description": "no such job"},
}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)


def find(store: Store, job_id: str) -> JobRecord:
    rec = store.get(job_id)
    if rec is None:
        raise HTTPException(404, f"job_id: no job {job_id!r}")
    return rec


@router.post("", status_code=202, response_model=JobOut, summary="Submit a training job", responses={
    400: {"model": ErrorOut, "description": "malformed JSON"},
    413: {"model": ErrorOut, "description": "body above HES_MAX_REQUEST_BYTES"},
    422: {"model": ErrorOut, "description": "a bad field, a service limit, or a job the cluster cannot hold"},
    503: {"model": ErrorOut, "description": "too many submits having their data checked (HES_MAX_PARALLEL_ADMISSIONS); "
                                            "retry after the Retry-After seconds"},
})
def submit(config: Annotated[JobConfig, Body(openapi_examples=EXAMPLES)], response: Response,
           store: StoreDep, runner: RunnerDep, settings: SettingsDep, metrics: MetricsDep,
           admissions: AdmissionsDep) -> JobOut:
    """Validate the job config (unknown keys are errors), queue the job and answer 202 at once.

    The job starts when a slot (HES_MAX_CONCURRENT_JOBS) and enough free CPUs are there; until then it is
    PENDING and its `message` says what it waits for. Its outputs go to `<state_dir>/jobs/<id>/`."""
    try:
        cfg, total_rounds = admit(config, settings, runner.cluster(), admissions)
    except Refused as err:
        raise HTTPException(422, str(err)) from None
    except Busy as err:
        raise HTTPException(503, str(err), headers={"Retry-After": str(math.ceil(admissions.wait_s))}) from None
    job_id = secrets.token_hex(6)
    while store.get(job_id) is not None:
        job_id = secrets.token_hex(6)
    rec = JobRecord(id=job_id, name=cfg.name, status=JobStatus.PENDING, config=cfg.model_dump(mode="json"),
                    out_dir=str(settings.jobs_dir / job_id), message="queued",
                    progress=Snapshot(progress=ProgressInfo(total_rounds=total_rounds, epochs=cfg.train.epochs)))
    store.insert(rec)
    metrics.track(job_id)
    metrics.set_jobs(store.counts())
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return JobOut.of(rec)


@router.get("", response_model=JobPage, summary="A page of jobs, newest first")
def list_jobs(store: StoreDep, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> JobPage:
    records, total = store.page(status, limit, offset)
    return JobPage(jobs=[JobOut.of(r) for r in records], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, summary="One job: status, progress, metrics, result")
def get_job(job_id: str, store: StoreDep) -> JobOut:
    return JobOut.of(find(store, job_id))


@router.get("/{job_id}/history", response_model=HistoryOut, summary="The per-epoch rows (history.csv)")
def get_history(job_id: str, store: StoreDep) -> HistoryOut:
    rec = find(store, job_id)
    rows = rec.history if rec.terminal else read_records(Path(rec.out_dir)) or rec.history
    return HistoryOut(id=rec.id, rows=finite(rows))


@router.get("/{job_id}/model", summary="The trained weights (safetensors) once SUCCEEDED",
            response_class=FileResponse, responses={
                200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                      "description": "model.safetensors: one tensor per layer, metadata arch/activation/job"},
                409: {"model": ErrorOut, "description": "the job has not SUCCEEDED"}})
def get_model(job_id: str, store: StoreDep) -> FileResponse:
    rec = find(store, job_id)
    path = Path(rec.out_dir) / "model.safetensors"
    if rec.status != "SUCCEEDED":
        raise HTTPException(409, f"job_id: job {job_id} is {rec.status}; its model is served once SUCCEEDED")
    if not path.is_file():
        raise HTTPException(404, f"job_id: job {job_id} has no model file (its outputs were removed)")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{rec.name}-{rec.id}.safetensors")


@router.post("/{job_id}/stop", status_code=202, response_model=JobOut, summary="Stop a job", responses={
    409: {"model": ErrorOut, "description": "the job is already over"}})
def stop_job(job_id: str, store: StoreDep, runner: RunnerDep) -> JobOut:
    """The job ends STOPPED after its current round; its last checkpoint stays in its outputs."""
    find(store, job_id)
    stopped = runner.stop(job_id)
    if stopped is None:
        raise HTTPException(409, f"job_id: job {job_id} is already {find(store, job_id).status}")
    return JobOut.of(stopped)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job", responses={
    409: {"model": ErrorOut, "description": "the job is PENDING or RUNNING: stop it first"}})
def delete_job(job_id: str, store: StoreDep, runner: RunnerDep) -> Response:
    """Removes the record, the job's metric series and its outputs. Only for SUCCEEDED, FAILED, STOPPED."""
    rec = find(store, job_id)
    if not runner.forget(job_id):
        raise HTTPException(409, f"job_id: job {job_id} is {rec.status}; stop it first "
                                 f"(POST /v1/jobs/{job_id}/stop), then delete it")
    return Response(status_code=204)
