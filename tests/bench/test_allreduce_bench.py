"""bench/allreduce.py without a sandbox: its per-round arithmetic, the node sizes, issue 21's targets with PASS and
FAIL, and the section's tables from rows as bench/network.py run_row fills them."""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import allreduce  # noqa: E402
from network import DDP, Row  # noqa: E402

P = 1000  # parameters: 4P = 4000 bytes


def row(label: str, workers: int, round_ms: float, busiest: int, link: str = "100mbit", rounds: int = 10,
        ring_sent: int = 0, status: str = "SUCCEEDED") -> Row:
    return Row(label, link, 1, 12.5, [(6.0, 0.91), (12.5, 0.955)], busiest, "hesa-h2", status, workers, rounds,
               round_ms * rounds / 1000, P, ring_sent)


def test_per_round_figures_divide_the_job_by_its_full_rounds() -> None:
    r = row("allreduce", 3, 120.0, busiest=70_000, ring_sent=3 * 10 * 5_336)
    assert math.isclose(allreduce.per_round(r), 0.120)
    assert allreduce.bytes_per_round(r) == 7_000
    assert math.isclose(allreduce.vectors(r), 7_000 / 4_000)
    assert allreduce.ring_per_round(r) == 5_336
    assert math.isnan(allreduce.ring_per_round(row("server", 3, 300.0, busiest=1)))  # no ring in server mode
    assert math.isnan(allreduce.per_round(row("server", 3, 300.0, busiest=1, rounds=0)))


def test_node_cpus_fit_the_workers_on_three_hosts() -> None:
    assert [allreduce.node_cpus(n) for n in (1, 2, 3, 4, 6, 7)] == [1, 1, 1, 2, 2, 3]


def test_targets_pass_and_fail_on_their_limits() -> None:
    rows = [row("allreduce", 6, 130.0, busiest=10 * 8_800),  # 2.2 x 4P per round: on the limit
            row("allreduce", 6, 900.0, busiest=10 * 8_804, link="10mbit"),  # just over it
            row(DDP, 6, 100.0, busiest=1), row("allreduce", 2, 126.0, busiest=1), row(DDP, 2, 100.0, busiest=1)]
    lines = [t.line for t in allreduce.targets(rows, ["100mbit", "10mbit"], [2, 3, 6])]
    assert "N = 6, 100mbit: busiest link per full round, in 4P bytes: 2.20 (target <= 2.2): **PASS**" in lines[0]
    assert "N = 6, 10mbit" in lines[1] and lines[1].endswith("**FAIL**")
    assert "N = 2, 100mbit: full round / DDP step: 1.26 (target <= 1.25): **FAIL**" in lines[2]
    assert "N = 3" in lines[3] and "not measured" in lines[3] and lines[3].endswith("**FAIL**")
    assert "N = 6, 100mbit: full round / DDP step: 1.30" in lines[4]
    failed = [row("allreduce", 6, 100.0, busiest=1, status="FAILED: no result.json")]
    assert "not measured" in allreduce.targets(failed, ["100mbit"], [])[0].line  # a failed row is no figure


def test_render_writes_both_parts_loads_and_what_was_left_out() -> None:
    plan = allreduce.Plan(links=("100mbit",), sizes=(2,), tta_epochs=12)
    got = allreduce.Measured(
        rounds=[row("server", 2, 280.0, busiest=80_000), row("allreduce", 2, 100.0, busiest=52_000, ring_sent=80_000),
                row(DDP, 2, 90.0, busiest=44_000), row("allreduce", 2, 1.0, 1, status="FAILED: timed out")],
        tta=[row("H-ES lowrank r=2", 3, 1.0, busiest=5_000_000),
             Row("localsgd r=4", "100mbit", 12, 90.0, [(7.5, 0.93), (90.0, 0.948)], 9, "hesa-h3")],
        loads=["100mbit N=2 server: 1.0, 1.0, 1.0 / 1.5, 1.1, 1.0"])
    text = allreduce.render(got, plan, started=0.0)
    assert "| 2 | server | 10 | 280 ms | 3.11x | 0.01 MB (hesa-h2) | 2.00 | n/a | 12.5 |" in text
    assert "| 2 | allreduce | 10 | 100 ms | 1.11x | 0.01 MB (hesa-h2) | 1.30 | 0.00 MB | 12.5 |" in text
    assert "| 2 | allreduce (FAILED: timed out) |" in text
    assert "full round / DDP step: 1.11 (target <= 1.25): **PASS**" in text
    assert "Not measured in this run: N = 3, N = 6." in text
    assert "| H-ES lowrank r=2 | 12.5 | 95.50% |" in text
    assert "| localsgd r=4 | not reached in 12 epochs | 94.80% | 90.0 |" in text
    assert "100mbit N=2 server: 1.0, 1.0, 1.0 / 1.5, 1.1, 1.0" in text
    assert "P = 1,000 parameters" in text
    assert ("Per full round, on the busiest link: at N = 2 allreduce takes 0.36x the server's seconds and 0.65x its "
            "bytes, 1.11x DDP's seconds and 1.18x its bytes.") in text
