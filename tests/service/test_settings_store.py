"""Service settings (HES_* variables, unsafe values refused) and the SQLite job store (WAL, survives reopen)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from coordinator.documents import JobResult, JobStatus, ProgressInfo, Snapshot
from service.cli import main
from service.settings import Settings
from service.store import JobRecord, Store


@pytest.fixture(autouse=True)
def no_hes_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("HES_")]:
        monkeypatch.delenv(key)


def test_non_loopback_host_needs_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HES_STATE_DIR", str(tmp_path))
    for host in ("0.0.0.0", "192.0.2.7", "::", "example.org"):
        with pytest.raises(ValidationError, match="host: refusing"):
            Settings(host=host)
    monkeypatch.setenv("HES_API_TOKEN", "   ")  # blank is no token
    with pytest.raises(ValidationError, match="HES_API_TOKEN"):
        Settings(host="0.0.0.0")
    monkeypatch.setenv("HES_API_TOKEN", "s3cret")
    token = Settings(host="0.0.0.0").api_token
    assert token is not None and token.get_secret_value() == "s3cret"
    monkeypatch.delenv("HES_API_TOKEN")
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert Settings(host=host).api_token is None


def test_hes_serve_refuses_a_public_address_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 2
    assert "hes serve: host: refusing to listen on the non-loopback address '0.0.0.0'" in capsys.readouterr().err


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_a_blank_token_is_refused_not_taken_for_no_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], blank: str) -> None:
    monkeypatch.setenv("HES_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("HES_API_TOKEN", blank)
    with pytest.raises(ValidationError, match="HES_API_TOKEN is set but blank"):
        Settings()  # on loopback too: a blank token must not quietly turn authentication off
    assert main(["serve", "--port", "8123"]) == 2
    err = capsys.readouterr().err
    assert err == ("hes serve: api_token: HES_API_TOKEN is set but blank; set it to a token, or unset it to serve "
                   "without authentication on a loopback address\n")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HES_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HES_PORT", "9123")
    monkeypatch.setenv("HES_MAX_K", "32")
    monkeypatch.setenv("HES_MNIST_DIR", str(tmp_path / "mnist"))
    s = Settings()
    assert (s.port, s.max_k, s.state_dir) == (9123, 32, (tmp_path / "state").resolve())
    assert s.allowed_data_roots == [(tmp_path / "state" / "data").resolve(), (tmp_path / "mnist").resolve()]
    monkeypatch.setenv("HES_ALLOWED_DATA_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert Settings().allowed_data_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    monkeypatch.setenv("HES_ALLOWED_DATA_ROOTS", json.dumps([str(tmp_path / "c")]))
    assert Settings().allowed_data_roots == [(tmp_path / "c").resolve()]
    monkeypatch.setenv("HES_MAX_K", "0")
    with pytest.raises(ValidationError, match="max_k"):
        Settings()


def record(job_id: str, status: JobStatus = JobStatus.PENDING,
           created: str = "2026-01-01T00:00:00.000+00:00") -> JobRecord:
    return JobRecord(id=job_id, name=f"job-{job_id}", status=status, config={"seed": 1}, out_dir=f"/x/{job_id}",
                     progress=Snapshot(progress=ProgressInfo(total_rounds=10)), created_at=created)


def test_store_is_wal_and_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "state" / "jobs.db"
    store = Store(db)
    assert store.journal_mode() == "wal"
    store.insert(record("a", created="2026-01-01T00:00:01.000+00:00"))
    store.insert(record("b", JobStatus.RUNNING, created="2026-01-01T00:00:02.000+00:00"))
    store.insert(record("c", JobStatus.SUCCEEDED, created="2026-01-01T00:00:03.000+00:00"))
    store.update("b", progress=Snapshot(progress=ProgressInfo(round=5, total_rounds=10),
                                        metrics={"dev_accuracy": 0.5, "dev_loss": float("nan")}),
                 history=[{"epoch": 1, "dev_accuracy": 0.5}], message="running")
    done = JobResult(status=JobStatus.SUCCEEDED, final={"dev_accuracy": 0.9})
    store.update("c", result=done, finished_at="t")
    store.close()

    store = Store(db)
    b = store.get("b")
    assert b is not None and b.message == "running" and b.status is JobStatus.RUNNING
    assert b.progress.metrics == {"dev_accuracy": 0.5, "dev_loss": None}  # a diverged loss is stored as null
    assert b.progress.progress.round == 5
    assert b.history == [{"epoch": 1, "dev_accuracy": 0.5}] and b.updated_at > b.created_at
    c = store.get("c")
    assert c is not None and c.terminal and c.result == done
    assert store.get("nope") is None
    assert [r.id for r in store.unfinished()] == ["a", "b"]
    page, total = store.page(None, limit=2, offset=0)
    assert [r.id for r in page] == ["c", "b"] and total == 3
    page, total = store.page(None, limit=2, offset=2)
    assert [r.id for r in page] == ["a"] and total == 3
    page, total = store.page("RUNNING", limit=10, offset=0)
    assert [r.id for r in page] == ["b"] and total == 1
    assert store.counts() == {**dict.fromkeys(JobStatus, 0), "PENDING": 1, "RUNNING": 1, "SUCCEEDED": 1}
    assert store.delete("c") and not store.delete("c")
    assert [r.id for r in store.all()] == ["a", "b"]


def test_a_store_of_an_older_version_opens_with_its_jobs_and_keeps_a_stop_request(tmp_path: Path) -> None:
    """A jobs.db written before restarts and stop requests were columns: opened, its rows read with the defaults."""
    import sqlite3

    db = tmp_path / "jobs.db"
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
                "message TEXT NOT NULL DEFAULT '', config TEXT NOT NULL, progress TEXT NOT NULL, "
                "history TEXT NOT NULL DEFAULT '[]', result TEXT, out_dir TEXT NOT NULL, created_at TEXT NOT NULL, "
                "started_at TEXT, finished_at TEXT, updated_at TEXT NOT NULL)")
    old.execute("INSERT INTO jobs (id, name, status, config, progress, out_dir, created_at, updated_at) "
                "VALUES ('a', 'old', 'RUNNING', '{}', ?, '/tmp/a', 't0', 't0')", (Snapshot().model_dump_json(),))
    old.commit()
    old.close()
    store = Store(db)
    a = store.get("a")
    assert a is not None and a.status is JobStatus.RUNNING and a.restarts == 0 and a.stop_requested is False
    store.update("a", stop_requested=True)
    store.close()
    again = Store(db).get("a")
    assert again is not None and again.stop_requested is True
