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

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    state_dir: Path = Path("~/.hes")  # holds jobs.db (the job store) and jobs/<id>/ (each job's outputs)
    api_token: SecretStr | None = None  # when set, /v1/* needs `Authorization: Bearer <token>`
    # data.path must lie under one of these; empty: <state_dir>/data and $HES_MNIST_DIR when set.
    allowed_data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    max_concurrent_jobs: Annotated[int, Field(ge=1)] = 4  # more are kept PENDING until a slot frees
    max_k: Annotated[int, Field(ge=1)] = 1000  # hybrid.k above this is refused
    max_workers_per_job: Annotated[int, Field(ge=1)] = 64
    max_parameters: Annotated[int, Field(ge=1)] = 50_000_000  # 50M float32 = 200 MB per replica
    max_request_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    # cluster.cpus_per_worker below this is refused: a tiny share would start one process per sliver of a CPU.
    min_cpus_per_worker: Annotated[float, Field(gt=0)] = 0.5
    max_total_rounds: Annotated[int, Field(ge=1)] = 2_000_000  # train.epochs x rounds per epoch above this is refused
    # Submits whose data files are inspected at the same time; another waits this long, then gets 503.
    max_parallel_admissions: Annotated[int, Field(ge=1)] = 2
    admission_wait_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    # None: start a Ray of our own in this process. Joining a cluster lets jobs outlive a service restart
    # (a token-auth Ray cluster also needs RAY_AUTH_MODE=token in the service's environment).
    ray_address: str | None = None
    ray_num_cpus: Annotated[int, Field(ge=0)] | None = None  # CPUs of that Ray; None: all of this machine
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5  # how often running jobs are polled
    # A job whose coordinator dies (actor killed, node lost, service restarted) is restarted from its latest
    # checkpoint up to this many times, then FAILED.
    job_max_restarts: Annotated[int, Field(ge=0, le=1000)] = 3
    # model.factory and data.factory must name a module inside one of these packages (comma-separated module
    # prefixes); the name is checked before anything is imported. Default: the examples shipped with the project.
    allowed_factories: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["examples"])

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
