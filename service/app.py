"""Wires the FastAPI app: settings, store, metrics, Ray runner, the job poller, middleware, error format.

Run it with `hes serve` (uvicorn, one process; it is the Ray driver and starts or joins Ray).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from coordinator.actor import cluster_resources, connect_ray, disconnect_ray
from service.metrics import Metrics
from service.routes import jobs, system
from service.runner import Runner
from service.security import BearerAuth, BodyLimit
from service.settings import Settings
from service.store import Store

log = logging.getLogger("hes.service")

DESCRIPTION = """Submit Hybrid-ES training jobs, follow them, fetch their models.

A job config is one JSON document (unknown keys are errors); `POST /v1/jobs` answers 202 with a
`Location`. Every refusal is a 4xx whose `detail` starts with the field it is about. When the service
has an API token, every `/v1/*` request needs `Authorization: Bearer <token>`.
Metrics for Prometheus are at `/metrics`."""


async def poll_forever(runner: Runner, every: float, stopping: asyncio.Event) -> None:
    """Poll the running jobs until the service stops; a failing tick is logged, never fatal."""
    while not stopping.is_set():
        try:
            await asyncio.to_thread(runner.tick)
        except Exception:
            log.exception("job poller: tick failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=every)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    # No HES_RAY_ADDRESS: a Ray of our own ("local"), even if some `ray start` cluster runs on this machine.
    await asyncio.to_thread(connect_ray, settings.ray_address or "local", settings.ray_num_cpus)
    app.state.store = store = Store(settings.db_path)
    app.state.runner = runner = Runner(settings, store, app.state.metrics)
    await asyncio.to_thread(runner.reattach)
    stopping = asyncio.Event()
    app.state.poller = asyncio.create_task(poll_forever(runner, settings.poll_seconds, stopping))
    log.info("job service ready: state in %s, Ray %s", settings.state_dir, cluster_resources())
    try:
        yield
    finally:
        stopping.set()
        await app.state.poller
        store.close()
        disconnect_ray()


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if len(parts) > 1 else parts
    return ".".join(parts)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 (400 for malformed JSON) with each message starting with its field, e.g. `hybrid.r: ...`."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    malformed = False
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            malformed = True
            errors.append({"field": "body", "message": f"malformed JSON: {e.get('ctx', {}).get('error', e['msg'])}"})
        elif e.get("type") == "extra_forbidden":
            errors.append({"field": _field(e["loc"]), "message": "unknown key"})
        else:
            errors.append({"field": _field(e["loc"]), "message": str(e["msg"])})
    detail = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=400 if malformed else 422)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="Hybrid-ES job service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.poller = None
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    if settings.api_token is not None:
        app.add_middleware(BearerAuth, token=settings.api_token.get_secret_value())  # outermost: auth first

    def openapi() -> dict[str, Any]:
        """The generated schema, plus the bearer scheme on /v1/* when a token is set (BearerAuth enforces it)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            if settings.api_token is not None:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}}
                for path, ops in schema["paths"].items():
                    if path.startswith("/v1/"):
                        for op in ops.values():
                            op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
