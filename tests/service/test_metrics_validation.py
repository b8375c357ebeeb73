"""Metrics bookkeeping (deltas, per-round bytes, removal) and the admission checks, without a server."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.config import validate_config
from coordinator.documents import ProgressInfo, RoundCounts, RoundReport, SentBytes, Snapshot
from service.metrics import Metrics
from service.schemas import finite
from service.settings import Settings
from service.validation import Refused, admit, check_capacity, resolve_data_path


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def snapshot(rounds: tuple[int, int], full: tuple[int, int], sync: tuple[int, int]) -> Snapshot:
    return Snapshot(rounds=RoundCounts(full=rounds[0], stochastic=rounds[1]),
                    sent=SentBytes(up={"full": full[0], "stochastic": 21 * rounds[1], "sync": sync[0]},
                                   down={"full": full[1], "stochastic": 15 * rounds[1], "sync": sync[1]}),
                    improvements=rounds[1], worker_failures=1, progress=ProgressInfo(fraction=0.5),
                    metrics={"train_loss": 0.7, "dev_accuracy": 0.8})


def event(kind: str, up: dict[str, int], down: dict[str, int]) -> RoundReport:
    return RoundReport(round=0, kind=kind, seconds=0.01, up=up, down=down, improvements=0, loss=0.0)


def test_counters_follow_the_coordinator_totals_without_double_counting() -> None:
    m = Metrics()
    m.track("j1")
    assert value(m, "hes_rounds_total", job="j1", kind="full") == 0
    m.update("j1", snapshot((2, 1), (800, 900), (8, 0)))
    m.update("j1", snapshot((2, 1), (800, 900), (8, 0)))  # the same totals polled again
    m.update("j1", snapshot((3, 2), (1200, 1300), (16, 4)))
    assert value(m, "hes_rounds_total", job="j1", kind="full") == 3
    assert value(m, "hes_sent_bytes_total", job="j1", kind="full", direction="down") == 1300
    assert value(m, "hes_sent_bytes_total", job="j1", kind="stochastic", direction="up") == 42
    assert value(m, "hes_sent_bytes_total", job="j1", kind="sync", direction="down") == 4
    assert value(m, "hes_stochastic_improvements_total", job="j1") == 2
    assert value(m, "hes_worker_failures_total") == 1
    assert value(m, "hes_train_loss", job="j1") == 0.7 and value(m, "hes_job_progress_ratio", job="j1") == 0.5


def test_a_round_is_observed_with_its_decision_from_the_next_task() -> None:
    """Full round 0 (gradients up, its gradient down with task 1), stochastic 1, full 2; 2 workers."""
    m = Metrics()
    m.update("j", Snapshot(), [event("full", {"full": 800}, {"full": 12}),
                       event("stochastic", {"stochastic": 42}, {"full": 800, "stochastic": 12}),
                       event("full", {"full": 800}, {"full": 12, "stochastic": 18})])
    assert value(m, "hes_round_sent_bytes_count", kind="full") == 1  # round 2 waits for its decision
    assert value(m, "hes_round_sent_bytes_sum", kind="full") == 800 + 12 + 800
    assert value(m, "hes_round_sent_bytes_sum", kind="stochastic") == 42 + 12 + 18  # 36 B per worker
    assert value(m, "hes_round_sent_bytes_bucket", kind="stochastic", le="256.0") == 1
    m.finish("j")
    assert value(m, "hes_round_sent_bytes_count", kind="full") == 2
    assert value(m, "hes_round_duration_seconds_count", kind="full") == 2


def test_deleting_a_job_removes_its_series() -> None:
    m = Metrics()
    for job in ("keep", "drop"):
        m.update(job, snapshot((1, 1), (10, 10), (0, 0)))
    m.remove("drop")
    names = samples(m)
    assert not [k for k in names if ("job", "drop") in k[1]]
    assert [k for k in names if ("job", "keep") in k[1]]
    m.remove("never-there")


def test_finite_turns_diverged_numbers_into_null() -> None:
    doc = {"a": math.nan, "b": [1.0, -math.inf, {"c": math.inf}], "d": 2, "e": "x"}
    assert finite(doc) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2, "e": "x"}


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("HES_MNIST_DIR", raising=False)
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    return Settings(state_dir=tmp_path / "state", allowed_data_roots=[tmp_path / "data"], max_k=50,
                    max_workers_per_job=4, max_parameters=100_000)


JOB = {"data": {"dataset": "digits"}, "model": {"hidden": [16]}, "train": {"epochs": 2, "batch_size": 100},
       "hybrid": {"k": 4}, "cluster": {"workers": 2}}


def refused(cfg: dict[str, Any], settings: Settings, cluster: dict[str, float] | None = None) -> str:
    with pytest.raises(Refused) as err:
        admit(validate_config(cfg), settings, cluster if cluster is not None else {"CPU": 2.0})
    return str(err.value)


def test_admission_names_the_field(settings: Settings, tmp_path: Path) -> None:
    cfg, total = admit(validate_config(JOB), settings, {"CPU": 2.0})
    assert total == 2 * (1198 // 100)  # digits: 1,797 - 300 test - 299 dev = 1,198 training images
    assert refused({**JOB, "hybrid": {"k": 51}}, settings).startswith("hybrid.k: 51")
    assert refused({**JOB, "cluster": {"workers": 5}}, settings).startswith("cluster.workers: 5 exceeds")
    assert refused({**JOB, "cluster": {"workers": 0}}, settings).startswith("cluster.workers")
    assert refused({**JOB, "cluster": {"workers": 2, "address": "ray://x:1"}}, settings).startswith("cluster.address")
    assert refused({**JOB, "model": {"hidden": [4000]}}, settings).startswith("model.hidden")
    assert refused({**JOB, "train": {"batch_size": 2000}}, settings).startswith("train.batch_size")
    assert refused({**JOB, "data": {"dataset": "digits", "dev_size": 5000}}, settings).startswith("data.dev_size")
    assert refused(JOB, settings, {"CPU": 1.0}).startswith("cluster.workers: 2 workers x 1 CPU")
    mnist = {**JOB, "data": {"dataset": "mnist", "path": "mnist"}}
    assert refused(mnist, settings).startswith("data.path: ")  # inside the root, but no IDX files


def test_data_paths_stay_inside_the_allowed_roots(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "outside")

    def resolved(path: str) -> str | None:
        cfg = validate_config({"data": {"dataset": "mnist", "path": path}})
        return resolve_data_path(cfg, settings).data.path

    assert resolved("mnist") == str(tmp_path / "data" / "mnist")
    assert resolved(str(tmp_path / "data" / "mnist" / ".." / "mnist")) == str(tmp_path / "data" / "mnist")
    for bad in ("../../../../etc", "/etc", str(tmp_path / "outside"), "link", "../data/../outside"):
        with pytest.raises(Refused, match="^data.path: .* outside the allowed data roots"):
            resolved(bad)
    with pytest.raises(Refused, match="^data.path: 'nope' does not exist"):
        resolved("nope")
    with pytest.raises(Refused, match="^data.path: .* is not a usable path"):
        resolved("mnist\x00")
    with pytest.raises(Refused, match="^data.path: '~x' does not exist"):
        resolved("~x")  # a folder named ~x under the first root, not someone's home


def test_capacity_counts_cpus_and_gpus() -> None:
    cfg = validate_config({**JOB, "cluster": {"workers": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 1}})
    check_capacity(cfg, {"CPU": 1.0, "GPU": 2.0})
    with pytest.raises(Refused, match="^cluster.gpus_per_worker: .* need 1 CPUs and 2 GPUs"):
        check_capacity(cfg, {"CPU": 8.0, "GPU": 1.0})
