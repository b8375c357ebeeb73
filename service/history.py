"""A job's per-epoch history, read in one place: from its folder (history.csv, config.json) or from a service.

The report (service/report.py), the overlay (service/overlay.py) and the runner (service/runner.py) read it here.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.outputs import HISTORY_COLUMNS

Row = dict[str, float]


@dataclass(frozen=True)
class JobHistory:
    """A job's history records as read (CSV strings, or JSON numbers from a service) and its config."""
    records: list[dict[str, Any]]
    config: dict[str, Any]
    source: str  # what the messages name: the history file, or "job ID"
    folder: Path | None  # the job's folder; None for a job read from a service


def fetch_history(target: str, server: str | None) -> JobHistory:
    """A job folder (or its history.csv file); else a job id on the service at `server` ($HES_API_TOKEN)."""
    path = Path(target)
    if path.exists() or "/" in target:  # job ids have no slash; a path that does not exist fails here
        folder = path if path.is_dir() else path.parent
        file = folder / "history.csv" if path.is_dir() else path
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        with file.open(newline="") as f:
            return JobHistory(list(csv.DictReader(f)), config, str(file), folder)
    from service.client import Client  # httpx only for a job on a service

    client = Client(server)
    try:
        job = client.job(target)
        records = client.history(target).rows
    finally:
        client.close()
    return JobHistory(records, job.config, f"job {target}", None)


def rows_from(records: Sequence[Mapping[str, Any]], source: str) -> list[Row]:
    """History records (CSV strings or JSON numbers, None for a diverged value) as float rows of HISTORY_COLUMNS."""
    if not records:
        raise ValueError(f"{source}: no finished epoch yet, nothing to plot")
    missing = [c for c in HISTORY_COLUMNS if c not in records[0]]
    if missing:
        raise ValueError(f"{source}: not a job history (no column {', '.join(missing)})")
    return [{c: math.nan if r[c] in (None, "") else float(r[c]) for c in HISTORY_COLUMNS} for r in records]


def read_history(path: Path) -> list[Row]:
    """The float rows of DIR/history.csv, or of the CSV file `path` itself."""
    file = path / "history.csv" if path.is_dir() else path
    with file.open(newline="") as f:
        return rows_from(list(csv.DictReader(f)), str(file))


def read_records(out_dir: Path) -> list[dict[str, Any]]:
    """out_dir/history.csv as the service serves it: every column, ints where the column holds counts; [] when
    the job has finished no epoch yet."""
    path = out_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: _int_or_float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def describe(config: Mapping[str, Any]) -> str:
    """A title line from a job config: name, mode, r, K and sigma."""
    h = config.get("hybrid", {})
    return f"{config.get('name', 'job')}: {h.get('mode', '?')}, r={h.get('r', '?')}, K={h.get('k', '?')}, " \
           f"sigma={h.get('sigma', '?')}"


def loss_label(config: Mapping[str, Any]) -> str:
    """The y label of a loss plot: the job's train.loss."""
    return {"mse": "mean squared error"}.get(config.get("train", {}).get("loss", ""), "cross-entropy loss")
