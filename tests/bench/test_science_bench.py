"""bench/science.py: the es step timing runs on the real engine, and the section's whole path (pretraining,
jobs side by side on the local backend, the frozen model's accuracy, bytes, worker memory, verdicts, overlay
PNGs) runs end to end on the bundled digits."""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import science  # noqa: E402
from common import Context, JobSpec  # noqa: E402


def es_step_and_its_seeds(family: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """What science.es_step_case's decision (2 workers x 2 seeds) adds to the step of all-zero weights, the sum of
    what its seeds add one at a time, what it adds with the weights doubled, and the model's number of weights (the
    biases follow them)."""
    from workers.hybrid import apply_decision

    state, decision, hyper = science.es_step_case(family, n_workers=2, k=4)
    assert decision.array is not None and len(decision.array) == 4 and bool((decision.array != 0).all())
    base = apply_decision(state, replace(decision, array=np.zeros(4, np.float32)), hyper).theta

    def move(weights: np.ndarray) -> torch.Tensor:
        after = apply_decision(state, replace(decision, array=weights.astype(np.float32)), hyper)
        assert after.version == 2
        return after.theta - base

    singles = sum(move(np.where(np.arange(4) == i, decision.array, 0)) for i in range(4))
    return move(decision.array), singles, move(2 * decision.array), hyper.num_weights


def test_the_es_step_timing_applies_a_real_es_decision() -> None:
    moves = {}
    for family in ("lowrank", "gaussian"):
        moves[family], singles, doubled, n_weights = es_step_and_its_seeds(family)
        # the step is the weighted sum of its seeds' directions, on the weights only (atol: theta's float32 rounding)
        assert torch.allclose(singles, moves[family], rtol=1e-4, atol=1e-5)
        assert torch.allclose(doubled, 2 * moves[family], rtol=1e-4, atol=1e-5)
        assert torch.count_nonzero(moves[family][:n_weights]) > n_weights // 2
        assert not bool(moves[family][n_weights:].any())
    assert not bool((moves["lowrank"] == moves["gaussian"]).all())  # each family draws its own noise
    science.apply_seconds("lowrank", n_workers=1, k=2, repeats=1)  # times that step; its seconds go to make bench


def test_a_row_runs_on_the_local_backend_with_diagnostics_where_it_takes_stochastic_steps(tmp_path: Path) -> None:
    ctx = Context("", tmp_path, "bench", epochs=3)
    hybrid = science.Row("h", "hybrid", JobSpec("digits-demo"))
    sgd = science.Row("l", "localsgd", JobSpec("digits-demo", ("hybrid.mode=localsgd",)))
    tuned = science.Row("z", "zo", JobSpec("digits-demo", (f"model.init_from={science.PRETRAINED}", "hybrid.mode=zo",
                                                           "hybrid.combine=es")))
    assert science.job_spec(ctx, hybrid, 7, None).overrides == (
        "seed=7", science.LOCAL, science.DIAGNOSE, "train.epochs=3")
    assert science.job_spec(ctx, sgd, 7, None).overrides == ("hybrid.mode=localsgd", "seed=7", science.LOCAL,
                                                             "train.epochs=3")
    # a fine-tuning row keeps its preset's length and starts from the seed's pretraining folder
    assert science.job_spec(ctx, tuned, 7, "/runs/pre").overrides == (
        "model.init_from=/runs/pre", "hybrid.mode=zo", "hybrid.combine=es", "seed=7", science.LOCAL, science.DIAGNOSE)


def test_the_section_runs_end_to_end_on_digits(tmp_path: Path) -> None:
    ctx = Context("", tmp_path / "work", "bench", epochs=1)
    (tmp_path / "work").mkdir()
    start = f"model.init_from={science.PRETRAINED}"
    ft = ("hybrid.r=1", "train.epochs=1", "cluster.workers=2")
    comparison = science.Comparison("digits", "fine-tuning on digits", (
        science.Row("zo", "forward only", JobSpec("digits-demo", (start, "hybrid.mode=zo", "hybrid.combine=es",
                                                                  "hybrid.trials=shared", *ft))),
        science.Row("last", "last layer", JobSpec("digits-demo", (start, "hybrid.mode=localsgd",
                                                                  "model.trainable=last", *ft))),
        science.Row("frozen", "as it is", None),
    ), target="zo", against="last", margin=0.0, max_bytes=100.0)
    pretrain = JobSpec("digits-demo", ("data.classes=[0,1,2,3,4]", "cluster.workers=0", "train.lr=3.0"))
    text = science.run(ctx, [comparison], pretrain, tmp_path / "figures")

    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 3  # header, rule, one row each
    frozen = next(line for line in table if line.startswith("| frozen"))
    per_seed = [float(x.strip().rstrip("%")) for x in frozen.split("|")[5].split("/")]
    assert len(per_seed) == 3 and all(x < 60.0 for x in per_seed)  # it never saw five of the ten classes
    zo = next(line for line in table if line.startswith("| zo"))
    assert float(zo.split("|")[6].replace(",", "")) <= 100  # seed-only rounds: bytes per worker per round
    zo_dev, last_dev = (float(next(x for x in table if x.startswith(f"| {k}")).split("|")[3].strip().rstrip("%"))
                        for k in ("zo", "last"))
    verdict_line = text.split("- zo - last:")[1].splitlines()[0]
    gap = float(verdict_line.split(" pt")[0])
    assert abs(gap - (zo_dev - last_dev)) <= 0.011  # the table's medians are rounded to 0.01 pt
    assert ("**meets**" if gap >= 0 else "**misses**") in verdict_line
    for stem in ("accuracy_vs_epoch", "accuracy_vs_bytes"):
        assert (tmp_path / "figures" / f"science-digits-{stem}.png").stat().st_size > 1000


def test_a_diverged_job_is_a_row_result_not_a_crash(tmp_path: Path) -> None:
    from common import JobFailure, run_job_or_failure

    ctx = Context("", tmp_path, "bench", epochs=1)
    failed = run_job_or_failure(ctx, JobSpec("digits-demo", ("train.lr=1e308", "cluster.workers=0", "train.epochs=1")))
    assert isinstance(failed, JobFailure) and "round" in failed.message
    # a failed seed counts as the lowest: it is the median only when most seeds failed
    assert science.low_median([0.9, float("nan"), 0.8]) == 0.8
    assert math.isnan(science.low_median([float("nan"), float("nan"), 0.9]))
    assert science.dev_text(science.low_median([float("nan"), float("nan"), 0.9])) == "failed"


def test_a_row_whose_every_seed_failed_says_so(tmp_path: Path) -> None:
    failed = science.Row("a", "a rule", JobSpec("digits-demo"))
    frozen = science.Row("frozen", "as it is", None)
    comparison = science.Comparison("c", "a comparison", (failed, frozen), target="a", against="frozen", margin=0.0)
    nan = float("nan")
    results = {"c": [science.RowResult(failed, [], [nan] * 3, failures=("digits-demo: FAILED diverged in round 3",)),
                     science.RowResult(frozen, [], [0.5] * 3)]}
    text = science.render(Context("", tmp_path, "bench", 30), [comparison], results, JobSpec("digits-demo"),
                          [0.9] * 3, tmp_path / "figures")
    row = next(line for line in text.splitlines() if line.startswith("| a:")).split("|")
    assert row[3].strip() == "failed" and row[5].strip() == "failed / failed / failed"
    assert row[6].strip() == row[7].strip() == "n/a"  # unknown bytes, not zero
    frozen_row = next(line for line in text.splitlines() if line.startswith("| frozen:")).split("|")
    assert frozen_row[6].strip() == frozen_row[7].strip() == "0"
    assert "- a failed: digits-demo: FAILED diverged in round 3" in text
    assert "**misses**" in text.split("- a - frozen:")[1].splitlines()[0]
