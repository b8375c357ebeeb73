"""The service's settings: one pydantic-settings class read from `HES_*` variables, refusing unsafe values.

    HES_HOST=127.0.0.1 HES_PORT=8000 HES_STATE_DIR=~/.hes HES_API_TOKEN=... hes serve
    HES_ALLOWED_DATA_ROOTS=/data/mnist:/srv/data    (os.pathsep-separated, or a JSON list)
    HES_ALLOWED_FACTORIES=examples,mylab.models     (module prefixes a job's model.factory / data.factory may name)
"""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HES_", extra="ignore", validate_default=True)

    host: str = Field(default="127.0.0.1", description=(
        "The address `hes serve` listens on. A non-loopback address needs `HES_API_TOKEN`."))
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8000, description="The port `hes serve` listens on.")
    state_dir: Path = Field(default=Path("~/.hes"), description=(
        "Holds `jobs.db` (the SQLite job store) and `jobs/<id>/` (each job's outputs); jobs survive a restart."))
    api_token: SecretStr | None = Field(default=None, description=(
        "When set, /v1/* needs `Authorization: Bearer <token>` (the `hes` client sends `$HES_API_TOKEN`). Unset "
        "is allowed on a loopback host only; a blank token is refused."))
    allowed_data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list, description=(
        "Folders a job's data.path may point into, separated by the OS path separator (`:`) or as a JSON list. "
        "Empty: `<state_dir>/data`, and `$HES_MNIST_DIR` when set."))
    max_concurrent_jobs: Annotated[int, Field(ge=1)] = Field(default=4, description=(
        "Jobs running at once; more wait PENDING until one ends."))
    max_k: Annotated[int, Field(ge=1)] = Field(default=1000, description="A job with hybrid.k above this is refused.")
    max_workers_per_job: Annotated[int, Field(ge=1)] = Field(default=64, description=(
        "A job with cluster.workers above this is refused."))
    max_parameters: Annotated[int, Field(ge=1)] = Field(default=50_000_000, description=(
        "A job whose model has more parameters is refused (every replica holds them as float32: 4 bytes each, "
        "plus the gradient)."))
    max_request_bytes: Annotated[int, Field(ge=1024)] = Field(default=64 * 1024, description=(
        "Request bodies above this size are refused with 413."))
    min_cpus_per_worker: Annotated[float, Field(gt=0)] = Field(default=0.5, description=(
        "A job with cluster.cpus_per_worker below this is refused: a tiny share would start one process per "
        "sliver of a CPU."))
    max_total_rounds: Annotated[int, Field(ge=1)] = Field(default=2_000_000, description=(
        "A job with more rounds (train.epochs x rounds per epoch) is refused."))
    max_parallel_admissions: Annotated[int, Field(ge=1)] = Field(default=2, description=(
        "Submits whose data files are inspected at the same time; another waits `HES_ADMISSION_WAIT_SECONDS`, "
        "then gets 503 with Retry-After."))
    admission_wait_seconds: Annotated[float, Field(gt=0, le=60)] = Field(default=5.0, description=(
        "How long a submit waits for an admission slot before it gets 503."))
    ray_address: str | None = Field(default=None, description=(
        "The Ray cluster to join (`auto`: a local `ray start`). Unset: start a Ray of the service's own, on "
        "loopback only. Jobs on a joined cluster outlive a service restart (their coordinators are detached "
        "named actors); a token-auth cluster also needs RAY_AUTH_MODE=token in the service's environment."))
    ray_num_cpus: Annotated[int, Field(ge=0)] | None = Field(default=None, description=(
        "CPUs of the service's own Ray; unset: all of this machine's."))
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = Field(default=0.5, description=(
        "How often running jobs are polled for progress and metrics."))
    job_max_restarts: Annotated[int, Field(ge=0, le=1000)] = Field(default=3, description=(
        "A job whose coordinator dies (actor killed, node lost, service restarted) is restarted from its latest "
        "checkpoint up to this many times, then FAILED."))
    allowed_factories: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["examples"], description=(
        "Comma-separated module prefixes: a job's model.factory and data.factory must name a module inside one "
        "of them (checked by name, before anything is imported). Default: the examples shipped with the "
        "project."))

    @field_validator("allowed_data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("allowed_factories", mode="before")
    @classmethod
    def _split_prefixes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # A blank token is a mistake (an empty secret, a stray `export`), not a wish to turn auth off: refuse it.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("HES_API_TOKEN is set but blank; set it to a token, or unset it to serve without "
                             "authentication on a loopback address")
        return value

    @model_validator(mode="after")
    def _resolve_and_refuse_unsafe(self) -> Settings:
        if not is_loopback(self.host) and self.api_token is None:
            raise ValueError(f"host: refusing to listen on the non-loopback address {self.host!r} without "
                             "an API token; set HES_API_TOKEN or bind 127.0.0.1")
        self.state_dir = self.state_dir.expanduser().resolve()
        roots = list(self.allowed_data_roots)
        if not roots:
            roots.append(self.state_dir / "data")
            if os.environ.get("HES_MNIST_DIR"):
                roots.append(Path(os.environ["HES_MNIST_DIR"]))
        self.allowed_data_roots = [r.expanduser().resolve() for r in roots]
        return self

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.db"
