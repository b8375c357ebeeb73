"""`make chaos` in short: bench/chaos.py's soak with one job (cluster.full_rounds allreduce), an 8 s fault window
with one worker kill and one
service restart, its fault-free twin, and the section it writes (into a copy, never the repository's file)."""
from __future__ import annotations

import datetime
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402  (bench/ is a folder of scripts, not a package)
from sections import write_section  # noqa: E402

pytestmark = pytest.mark.slow


def own_processes() -> set[int]:
    """This test's descendants: what the soak left running, if anything (multiprocessing's resource tracker,
    which serves the process the soak ran in and lives as long as this one, is no leftover of the soak)."""
    pids = {int(n) for n in os.listdir("/proc") if n.isdigit()} & chaos._descendants(os.getpid())
    return {p for p in pids if "resource_tracker" not in chaos._cmdline(p)}


def test_a_short_soak_survives_a_worker_kill_and_a_service_restart(tmp_path: Path) -> None:
    # enough epochs that the job outlives the fault window on an idle machine too (50 ended in 3 s)
    # allreduce: the killed worker's peer fails its collective and the group is formed again (server mode's kills
    # are tests/coordinator/test_ray.py's)
    # one worker kill: two kills seconds apart can take both replicas of a 2-worker allreduce job before the
    # coordinator reads the state (docs/design.md, "Recovery rules"), which `make chaos` reports when it happens
    plan = chaos.Plan(jobs=1, epochs=300, window_s=8, worker_kill_every_s=(5.0, 5.0), coordinator_kill_at=None,
                      service_restart_at=0.6, node_removal_at=None, end_timeout_s=300, full_rounds=("allreduce",))
    # in a process of its own: the soak's Ray token settings and clusters must not outlive it in this one,
    # which the session's other Ray tests share
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        report = pool.submit(chaos.soaked, plan).result(timeout=900)

    kinds = [f.kind for f in report.faults if not f.note.startswith("not injected")]
    assert kinds.count("worker kill") >= 1 and kinds.count("service restart") == 1, report.faults
    (jid,) = report.ids
    job, twin = report.jobs[jid], report.twins[jid]
    assert job["status"] == "SUCCEEDED" and twin["status"] == "SUCCEEDED", (job["message"], twin["message"])
    assert job["restarts"] == 0  # the coordinator outlived the service and was reattached
    assert report.missing == [] and set(report.records.values()) == {1}
    assert report.worker_failures_metric == job["result"]["worker_failures"] >= 1
    assert job["result"]["final"] == twin["result"]["final"]  # a restarted, resynced worker changes nothing

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# BENCHMARKS\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    block = chaos.render(report, "test", datetime.datetime.now().astimezone(), "test", "test")
    write_section(out, chaos.KEY, block)
    write_section(out, chaos.KEY, block)  # replaced, not appended twice
    text = out.read_text()
    assert text.count(f"## {chaos.TITLE}") == 1 and "kept" in text and "1 of 1 SUCCEEDED" in text
    assert not list(Path("/tmp").glob(f"hes-chaos-*/state/jobs/{jid}"))  # the temp folder is gone
    assert own_processes() == set()  # cluster and service are down
