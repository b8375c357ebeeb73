"""In-process jobs (cluster.workers: 0): they learn, write their outputs, stop and resume bit for bit."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from coordinator.config import validate_config
from coordinator.job import Job
from service.cli import main as hes
from workers.messages import RoundKind


def digits_cfg(**hybrid: object) -> dict:
    return {"name": "t", "seed": 3, "data": {"dataset": "digits"},
            "model": {"arch": "mlp", "hidden": [32], "activation": "sigmoid"},
            "train": {"epochs": 4, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
            "hybrid": {"mode": "hybrid", "r": 2, "k": 4, "sigma": 1.0, "combine": "argmin", **hybrid},
            "cluster": {"workers": 0}}


def test_short_digits_run_learns_and_writes_outputs(tmp_path: Path) -> None:
    result = Job(validate_config(digits_cfg()), tmp_path).run()
    assert result.status == "SUCCEEDED"
    assert result.final["dev_accuracy"] > 0.7  # chance is 0.1
    assert (result.rounds.full, result.rounds.stochastic) == (22, 22)  # 4 epochs of 11 rounds, every 2nd full
    assert result.replica_checks.checked > 0 and result.replica_checks.mismatches == 0
    assert json.loads((tmp_path / "result.json").read_text()) == result.model_dump(mode="json")
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert weights["w0"].shape == (32, 64) and weights["b1"].shape == (10,)


@pytest.mark.parametrize("hybrid", [{"mode": "backprop"}, {"mode": "stale"}, {"mode": "localsgd"},
                                    {"combine": "notebook"}, {"combine": "elitist"}, {"r": 1}, {"r": 4}])
def test_every_mode_runs(tmp_path: Path, hybrid: dict) -> None:
    result = Job(validate_config(digits_cfg(**hybrid)), tmp_path).run()
    assert result.status == "SUCCEEDED"
    assert result.final["train_accuracy"] > 0.3
    if hybrid.get("mode") == "backprop":
        assert result.rounds.stochastic == 0
    if hybrid.get("r") == 1:  # Assisted H-ES: every batch gets a full round, then trials around its gradient
        assert result.rounds.stochastic == result.rounds.full == 44


def test_stop_then_resume_is_bitwise_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = validate_config(digits_cfg())
    whole = Job(cfg, tmp_path / "whole")
    whole.run()
    part = Job(cfg, tmp_path / "part")

    def stop_at_17(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 17:
            part.stop()

    assert part.run(on_round=stop_at_17).status == "STOPPED"
    resumed = Job(cfg, tmp_path / "part", resume=True)
    assert resumed.state.version == 18
    assert resumed.run().status == "SUCCEEDED"
    assert np.array_equal(resumed.state.theta.numpy(), whole.state.theta.numpy())
    assert len(resumed.history) == 4
    again = Job(cfg, tmp_path / "part", resume=True)  # resuming a finished job changes nothing
    assert again.progress.round == again.progress.total_rounds
    assert again.run().status == "SUCCEEDED"
    assert np.array_equal(again.state.theta.numpy(), whole.state.theta.numpy())


class Crash(Exception):
    """A coordinator that dies mid-round: nothing after it is written."""


@pytest.mark.parametrize("every", [None, 4])
def test_a_crash_resumes_from_the_latest_checkpoint_bitwise(tmp_path: Path, every: int | None) -> None:
    raw = digits_cfg()
    raw["train"]["checkpoint_every"] = every
    cfg = validate_config(raw)
    whole = Job(cfg, tmp_path / "whole")
    whole.run()
    crashed = Job(cfg, tmp_path / "crashed")

    def crash_at_18(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 18:
            raise Crash

    with pytest.raises(Crash):
        crashed.run(on_round=crash_at_18)
    resumed = Job(cfg, tmp_path / "crashed", resume=True)
    # epochs end at rounds 11, 22, ...; with checkpoint_every 4 also at 12 and 16 (a multiple of 4 that is no
    # epoch end); the rounds after the checkpoint are recomputed
    assert resumed.state.version == (16 if every else 11)
    assert resumed.run().status == "SUCCEEDED"
    assert np.array_equal(resumed.state.theta.numpy(), whole.state.theta.numpy())
    assert len(resumed.history) == 4
    assert [r["dev_accuracy"] for r in resumed.history] == [r["dev_accuracy"] for r in whole.history]


def test_cli_train_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps(digits_cfg()))
    assert hes(["train", "--config", str(cfg), "--set", "train.epochs=1", "--out", str(tmp_path / "o"),
                "--quiet"]) == 0
    assert "dev" in capsys.readouterr().out
    assert hes(["train", "--config", str(cfg), "--set", "hybrid.k=0", "--out", str(tmp_path / "x")]) == 2
    assert "hybrid.k" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # --resume continues the job as it was configured; a config beside it is refused, not ignored
    assert hes(["train", "--resume", str(tmp_path / "o"), "--set", "train.epochs=3"]) == 2
    assert "--set: not with --resume" in capsys.readouterr().err
    assert hes(["train", "--resume", str(tmp_path / "o"), "--quiet"]) == 0
    assert hes(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_assisted_schedule_pairs_rounds_on_one_batch() -> None:
    from workers.messages import RoundKind
    from workers.replica import Schedule

    s = Schedule("hybrid", 1, batch_size=10, n_train=45, seed=0, shuffle=True)
    assert s.rounds_per_epoch == 8
    assert [s.kind(t) for t in range(4)] == [RoundKind.FULL, RoundKind.STOCHASTIC] * 2
    assert (s.batch(2) == s.batch(3)).all() and not (s.batch(1) == s.batch(2)).all()
    assert not (s.batch(0) == s.batch(8)).all()  # reshuffled the next epoch


def test_schedules_count_rounds_over_the_whole_job() -> None:
    from workers.messages import RoundKind
    from workers.replica import Schedule

    hybrid = Schedule("hybrid", 4, batch_size=10, n_train=110, seed=0, shuffle=True)  # 11 rounds an epoch
    assert [t for t in range(22) if hybrid.kind(t) == RoundKind.FULL] == [0, 4, 8, 12, 16, 20]
    local = Schedule("localsgd", 4, batch_size=10, n_train=110, seed=0, shuffle=True)
    assert [t for t in range(22) if local.kind(t) == RoundKind.AVERAGE] == [3, 7, 11, 15, 19]  # after 4 steps


def test_localsgd_final_parameters_hold_every_local_step(tmp_path: Path) -> None:
    raw = digits_cfg(mode="localsgd", r=4)
    raw["train"]["epochs"] = 3  # 33 rounds: the last average is after round 31, round 32 steps locally
    job = Job(validate_config(raw), tmp_path)
    result = job.run()
    assert result.status == "SUCCEEDED" and result.bytes.sync == 0  # in process: nothing crosses
    worker = job.pool.replica.state  # type: ignore[attr-defined]
    assert worker is not None and worker.version == job.state.version
    assert torch.equal(worker.theta, job.state.theta)  # the coordinator gathered the last local step


def test_combine_rules_decide_as_documented() -> None:
    from coordinator.combine import Rules, combine  # a pure function: tests/coordinator/test_combine.py has more
    from workers.messages import Result, RoundKind
    from workers.state import DecisionKind

    def decide(rule: str, beats_current: tuple[bool, bool]) -> tuple[DecisionKind, int]:
        results = [Result(3, 0, seed=11, cost=0.5, beats_current=beats_current[0]),
                   Result(3, 1, seed=22, cost=0.25, beats_current=beats_current[1])]
        d = combine(3, RoundKind.STOCHASTIC, results, Rules(rule=rule, n_workers=2))
        return d.kind, d.seed

    assert decide("argmin", (False, False)) == (DecisionKind.SEED, 22)  # the best trial, whatever it costs
    assert decide("elitist", (False, True)) == (DecisionKind.SEED, 22)
    assert decide("elitist", (False, False))[0] == DecisionKind.KEEP
    assert decide("notebook", (True, False))[0] == DecisionKind.STALE
    assert decide("notebook", (False, False))[0] == DecisionKind.BIAS_ONLY


@pytest.mark.parametrize("hybrid", [{}, {"r": 3}, {"mode": "localsgd", "r": 3}, {"combine": "notebook"}])
def test_overlapped_rounds_end_bitwise_where_sequential_rounds_do(tmp_path: Path, hybrid: dict) -> None:
    """A pool whose workers compute elsewhere lets the coordinator apply round t-1's decision after sending
    round t's task; what the job ends with, and every epoch's figures, must not change."""
    from coordinator.job import local_pool
    from coordinator.pool import LocalPool

    unapplied_at_send: list[tuple[int, int]] = []  # (round, decisions waiting when its task went out)

    def overlapping(*parts: object) -> LocalPool:
        pool = local_pool(*parts)  # type: ignore[arg-type]
        assert isinstance(pool, LocalPool)
        pool.overlaps, pool.shares_state = True, False  # as a Ray worker: it re-applies every decision
        send = pool.send

        def send_and_look(task):  # type: ignore[no-untyped-def]
            unapplied_at_send.append((task.round, 0 if over._loop is None else len(over._loop._unapplied)))
            return send(task)

        pool.send = send_and_look  # type: ignore[method-assign]
        return pool

    cfg = validate_config(digits_cfg(**hybrid))
    plain = Job(cfg, tmp_path / "plain")
    plain.run()
    seen: list[int] = []
    over = Job(cfg, tmp_path / "over", pool_factory=overlapping)
    over.run(on_round=lambda event, progress: seen.append(over.state.version) if event.round == 5 else None)
    assert seen == [6]  # read mid-job, the state has the round's own decision applied
    # every task went out before the coordinator applied the previous decision, except round 0's and those
    # after a read of the state: at each epoch's end (evaluation) and in the callback after round 5
    waiting = dict(unapplied_at_send)
    assert list(waiting.values()).count(0) == 1 + (len(over.history) - 1) + 1
    # a full round followed by a stochastic one leaves the waiting decision to be applied under that one
    # (two decisions wait at its send), except when it checks the replicas; localsgd never has two waiting
    every, schedule = cfg.hybrid.replica_check_every, over.schedule
    for t in range(1, len(waiting)):
        deferred = (schedule.kind(t - 1) == RoundKind.FULL and schedule.kind(t) == RoundKind.STOCHASTIC
                    and (every == 0 or t - 1 == 0 or (t - 1) % every != 0))
        grown = waiting[t - 1] + 1 if deferred else 1  # 0 instead where the state was read in between
        assert waiting[t] in (0, grown), (t, waiting[t - 1], waiting[t], deferred)
    assert (max(waiting.values()) == 2) == (hybrid.get("mode") != "localsgd")
    assert torch.equal(over.state.theta, plain.state.theta)
    untimed = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert untimed(over.history) == untimed(plain.history)
