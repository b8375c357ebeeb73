"""The Grafana dashboard and its provisioning: structure, variables, and every query against the metric
contract (DESIGN.md) that `hes serve` exports; each query parsed by a real Prometheus."""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promql import ROOT, load_dashboard, panel_targets, prometheus, query, substitute

from coordinator.documents import RoundCounts, RoundReport, Snapshot
from service.metrics import Metrics

# DESIGN.md's metric table: name -> labels (histograms: the labels of their _bucket/_sum/_count series).
CONTRACT = {
    "hes_rounds_total": {"job", "kind"},
    "hes_sent_bytes_total": {"job", "kind", "direction"},
    "hes_round_sent_bytes": {"kind"},
    "hes_round_duration_seconds": {"kind"},
    "hes_job_progress_ratio": {"job"},
    "hes_train_loss": {"job"},
    "hes_dev_accuracy": {"job"},
    "hes_eval_return": {"job"},
    "hes_worker_episodes_per_second": {"job"},
    "hes_ring_bytes_total": {"job", "kind", "direction"},
    "hes_stochastic_improvements_total": {"job"},
    "hes_workers": {"state"},
    "hes_worker_failures_total": set(),
    "hes_jobs": {"status"},
}
HISTOGRAMS = {"hes_round_sent_bytes", "hes_round_duration_seconds"}
SELECTOR = re.compile(r"\b(hes_[a-z_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, from what service.metrics renders for one job with epoch metrics."""
    m = Metrics()
    m.update("job-1", Snapshot(rounds=RoundCounts(full=1), metrics={"train_loss": 1.0, "dev_accuracy": 0.5}),
             [RoundReport(round=0, kind="full", seconds=0.1, up={"full": 8}, down={"full": 8}, improvements=0,
                          loss=1.0)])
    m.update("job-2", Snapshot(rounds=RoundCounts(stochastic=1), metrics={"return": 500.0}),
             [RoundReport(round=0, kind="stochastic", seconds=0.5, up={"stochastic": 94}, down={"stochastic": 78},
                          improvements=0, loss=-500.0, episodes=16)])
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def contract_series() -> dict[str, set[str]]:
    out = {}
    for name, labels in CONTRACT.items():
        if name in HISTOGRAMS:
            out.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            out[name] = labels
    return out


def exprs() -> list[str]:
    return [t["expr"] for _, t in panel_targets(load_dashboard())]


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, value)}) for every hes_* selector in a query."""
    out = []
    for name, body in SELECTOR.findall(expr):
        matchers = {}
        for part in filter(str.strip, body.split(",")):
            m = MATCHER.fullmatch(part)
            assert m, f"unparsed matcher {part!r} in {expr}"
            matchers[m.group(1)] = (m.group(2), m.group(3))
        out.append((name, matchers))
    return out


def test_the_service_exports_exactly_the_contract() -> None:
    assert exported_series() == contract_series()


def test_dashboard_model() -> None:
    board = load_dashboard()
    assert board["uid"] == "hybrid-es"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    job = variables["job"]
    assert job["type"] == "query" and job["datasource"]["uid"] == "${datasource}"
    assert job["definition"] == job["query"]["query"] == "label_values(hes_job_progress_ratio, job)"
    assert not job["includeAll"] and not job["multi"]  # "$job" stands for exactly one job id


def test_panels_have_grid_positions_and_targets() -> None:
    board = load_dashboard()
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert {k: type(pos[k]) for k in "hwxy"} == dict.fromkeys("hwxy", int), panel["title"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0 and pos["x"] + pos["w"] <= 24
        mine = {(pos["x"] + i, pos["y"] + j) for i in range(pos["w"]) for j in range(pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets)
        for t in targets:
            assert t["expr"].strip() and t["datasource"] == panel["datasource"]


def test_every_query_uses_contract_metrics_and_labels() -> None:
    series = contract_series()
    used = set()
    for expr in exprs():
        found = selectors(expr)
        assert found, f"no hes_* metric in {expr}"
        labels: set[str] = set()
        for name, matchers in found:
            assert name in series, f"{name} is not in the metric contract: {expr}"
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
            allowed = series[name] | ({"exported_job"} if "job" in series[name] else set())
            assert set(matchers) <= allowed, f"{name}: labels {set(matchers) - allowed} do not exist: {expr}"
            labels |= allowed
        for group in GROUPING.findall(expr):
            by = {label.strip() for label in group.split(",") if label.strip()}
            assert by <= labels, f"grouping by {by - labels}, which no metric of the query has: {expr}"
    assert used == set(CONTRACT)  # every metric of the contract is on the dashboard


def test_job_series_are_filtered_by_the_job_variable_under_either_label() -> None:
    """A per-job selector picks $job whether Prometheus kept the `job` label (the shipped scrape config,
    honor_labels) or renamed it `exported_job` (a default scrape); each comes with its twin."""
    for expr in exprs():
        found = selectors(expr)
        for name, matchers in found:
            if "job" not in CONTRACT[re.sub(r"_(bucket|sum|count)$", "", name)]:
                continue
            which = {label for label in ("job", "exported_job") if matchers.get(label) == ("=~", "$job")}
            assert len(which) == 1, f"{name} is not filtered by $job: {expr}"
            other = "exported_job" if which == {"job"} else "job"
            rest = {k: v for k, v in matchers.items() if k not in ("job", "exported_job")}
            assert (name, {**rest, other: ("=~", "$job")}) in [(n, m) for n, m in found], \
                f"{name}{matchers} has no twin on {other}: {expr}"


@pytest.mark.parametrize("topic, pattern", [
    ("job progress", r"^hes_job_progress_ratio\{"),
    ("rounds per second by kind", r"^sum by \(kind\) \(rate\(hes_rounds_total"),
    ("bytes per round by kind",
     r"^sum by \(kind\) \(rate\(hes_sent_bytes_total.*\) / sum by \(kind\) \(rate\(hes_rounds"),
    ("cumulative bytes", r"^sum\(hes_sent_bytes_total\{job=~\"\$job\"\} or"),
    ("full-round cost of the same rounds",
     r"^sum\(hes_rounds_total\{[^}]*\} or [^)]*\) \* sum\(hes_sent_bytes_total\{[^}]*kind=\"full\"\}.*\) / "
     r"sum\(hes_rounds_total\{[^}]*kind=\"full\""),
    ("saving as a ratio", r"^1 - sum\(hes_sent_bytes_total"),
    ("round duration p50",
     r"^histogram_quantile\(0\.5, sum by \(le, kind\) \(rate\(hes_round_duration_seconds_bucket"),
    ("round duration p95",
     r"^histogram_quantile\(0\.95, sum by \(le, kind\) \(rate\(hes_round_duration_seconds_bucket"),
    ("train loss", r"^hes_train_loss\{"),
    ("dev accuracy", r"^hes_dev_accuracy\{"),
    ("evaluation return", r"^hes_eval_return\{"),
    ("episodes per second per worker", r"^hes_worker_episodes_per_second\{"),
    ("allreduce bytes per full round", r"^sum by \(direction\) \(rate\(hes_ring_bytes_total"),
    ("stochastic improvements per round",
     r"^sum\(rate\(hes_stochastic_improvements_total.*\) / sum\(rate\(hes_rounds_total\{[^}]*kind=\"stochastic\""),
    ("workers alive/restarting", r"^sum by \(state\) \(hes_workers\)$"),
    ("worker failures", r"^sum\(hes_worker_failures_total\)$"),
    ("jobs by status", r"^sum by \(status\) \(hes_jobs\)$"),
])
def test_the_issue_panels_are_there(topic: str, pattern: str) -> None:
    assert any(re.search(pattern, e) for e in exprs()), f"no query for {topic}"


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not shutil.which("prometheus"):
        pytest.skip("no prometheus binary (Debian package `prometheus`; .ci/run installs it)")
    with prometheus(tmp_path_factory.mktemp("prom"), []) as url:
        yield url


def test_a_black_box_job_shows_its_return_and_episode_rate() -> None:
    m = Metrics()
    m.update("bb", Snapshot(metrics={"return": 487.5}),
             [RoundReport(round=0, kind="stochastic", seconds=2.0, up={}, down={}, improvements=0, loss=-500.0,
                          episodes=16)])
    samples = {(s.name, s.labels.get("job")): s.value for f in text_string_to_metric_families(m.render().decode())
               for s in f.samples}
    assert samples[("hes_eval_return", "bb")] == 487.5
    assert samples[("hes_worker_episodes_per_second", "bb")] == 8.0  # 16 episodes / 2 s / 1 worker
    m.remove("bb")
    assert "bb" not in m.render().decode()


def test_every_query_parses_in_prometheus(empty_prometheus: str) -> None:
    for expr in exprs():
        answer = query(empty_prometheus, substitute(expr, "0123abcd"))
        assert answer["status"] == "success", f"{answer.get('error')}: {expr}"


def provisioning(name: str) -> dict:
    return yaml.safe_load((ROOT / "dashboards" / "provisioning" / name).read_text())


def test_provisioning_files() -> None:
    ds = provisioning("datasources/prometheus.yml")
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"] is True
    assert re.fullmatch(r"https?://[\w.-]+:\d+", source["url"])
    (provider,) = provisioning("dashboards/hes.yml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert provider["options"]["path"] != "/etc/grafana/provisioning"
    assert Path(ROOT / "dashboards" / "hybrid-es.json").is_file()
