"""The job store: one SQLite file (WAL mode) under the state dir; jobs and their records survive restarts.

A row per job: its config, status and message, the last progress snapshot, the per-epoch history, the
result once terminal, where its outputs live, and timestamps (ISO 8601, UTC).
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.documents import JobResult, JobStatus, Snapshot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    progress TEXT NOT NULL,
    history TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    out_dir TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
_JSON_COLUMNS = ("config", "progress", "history", "result")
_TYPED: dict[str, type[Snapshot] | type[JobResult]] = {"progress": Snapshot, "result": JobResult}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class JobRecord:
    id: str
    name: str
    status: JobStatus
    config: dict[str, Any]
    out_dir: str
    message: str = ""
    progress: Snapshot = field(default_factory=Snapshot)  # the coordinator's last snapshot
    history: list[dict[str, Any]] = field(default_factory=list)  # history.csv's rows
    result: JobResult | None = None
    created_at: str = field(default_factory=now)
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str = field(default_factory=now)
    restarts: int = 0  # times its coordinator died and the job was restarted from its checkpoint
    stop_requested: bool = False  # a stop was asked of its coordinator: kept so that no restart loses it

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class Store:
    """Thread-safe: one connection, one lock (the service's request threads and its poller share it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        if "restarts" not in columns:  # a store written before jobs were restarted automatically
            self._db.execute("ALTER TABLE jobs ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0")
        if "stop_requested" not in columns:  # a store written before stop requests were kept
            self._db.execute("ALTER TABLE jobs ADD COLUMN stop_requested INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def insert(self, rec: JobRecord) -> None:
        row = self._to_row(rec)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._from_row(row)

    def page(self, status: str | None, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        """Newest first; the total counts every job that matches the filter."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC "
                                    "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [self._from_row(r) for r in rows], int(total)

    def unfinished(self) -> list[JobRecord]:
        """PENDING and RUNNING jobs, oldest first (the queue's order)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status IN ('PENDING', 'RUNNING') "
                                    "ORDER BY created_at, rowid").fetchall()
        return [self._from_row(r) for r in rows]

    def all(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at, rowid").fetchall()
        return [self._from_row(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = now()
        row = {k: _encode(k, v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in row)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*row.values(), job_id))

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def counts(self) -> dict[str, int]:
        """Jobs per status, every status present."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys((s.value for s in JobStatus), 0)
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    @staticmethod
    def _to_row(rec: JobRecord) -> dict[str, Any]:
        return {k: _encode(k, v) for k, v in rec.__dict__.items()}

    @staticmethod
    def _from_row(row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        for k in _JSON_COLUMNS:
            d[k] = None if d[k] is None else json.loads(d[k])
            if k in _TYPED and d[k] is not None:
                d[k] = _TYPED[k].model_validate(d[k])
        d["status"] = JobStatus(d["status"])
        d["stop_requested"] = bool(d["stop_requested"])
        return JobRecord(**d)


def _encode(column: str, value: Any) -> Any:
    """A column's value as SQLite stores it: documents as JSON (NaN as null), the status as its name."""
    if column not in _JSON_COLUMNS or value is None:
        return str(value) if isinstance(value, JobStatus) else value
    if isinstance(value, (Snapshot, JobResult)):
        return value.model_dump_json()
    return json.dumps(value)
