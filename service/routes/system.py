"""Service routes outside /v1: liveness with the Ray connection, and Prometheus metrics."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.routes.jobs import MetricsDep, RunnerDep, StoreDep
from service.schemas import HealthOut

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=HealthOut, summary="200 when the service and its Ray connection are up",
            responses={503: {"model": HealthOut, "description": "Ray or the job poller is down"}})
def healthz(request: Request, runner: RunnerDep, store: StoreDep) -> HealthOut | JSONResponse:
    ray_doc: dict[str, Any]
    try:
        resources = runner.cluster()
        ray_doc = {"connected": True, "cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0)}
    except Exception as err:  # any failure to reach Ray means unhealthy, not a 500
        ray_doc = {"connected": False, "error": f"{type(err).__name__}: {err}"}
    poller = request.app.state.poller
    healthy = ray_doc["connected"] and poller is not None and not poller.done()
    doc = HealthOut(status="ok" if healthy else "unavailable", ray=ray_doc, jobs=store.counts())
    return doc if healthy else JSONResponse(doc.model_dump(), status_code=503)


@router.get("/metrics", summary="Prometheus text format (hes_* metrics of DESIGN.md)",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
