"""Section `seeds`: how much of the paper's table is the seed. Five seeds of the r=2 rows and the reference.

The same configs as section 1 with `seed` varied (initial weights, dev split, batch order and trial seeds
all follow it); one torch thread, in process. A single run of an unstable method can land anywhere in its
range, so the issue's thresholds are shown against every seed, not one.
"""
from __future__ import annotations

import statistics

from accuracy import ARGMIN_R2_DEV_MIN, LAST_EPOCHS
from common import Context, JobRun, JobSpec, code, paper_length, pct, run_jobs_side_by_side, table

SEEDS = (100, 101, 102, 103, 104)
ROWS = (
    ("Reference (backprop every round)", JobSpec("paper-reference")),
    ("H-ES r=2, argmin", JobSpec("paper-hes-r2")),
    ("H-ES r=2, notebook", JobSpec("paper-hes-r2", ("hybrid.combine=notebook",))),
    ("H-ES r=2, elitist", JobSpec("paper-hes-r2", ("hybrid.combine=elitist",))),
    ("Stale control r=2 (no search)", JobSpec("paper-hes-r2", ("hybrid.mode=stale",))),
    ("Reference, fixed order", JobSpec("paper-reference", ("train.shuffle=false",))),
    ("H-ES r=2, argmin, fixed order", JobSpec("paper-hes-r2", ("train.shuffle=false",))),
)


def run(ctx: Context) -> str:
    keys = [(label, seed) for label, _ in ROWS for seed in SEEDS]
    specs = [paper_length(ctx, spec).plus(f"seed={seed}") for _, spec in ROWS for seed in SEEDS]
    runs = dict(zip(keys, run_jobs_side_by_side(ctx, specs), strict=True))
    rows = []
    for label, spec in ROWS:
        mine = [runs[(label, seed)] for seed in SEEDS]
        devs = [r.final.dev_accuracy for r in mine]
        rows.append([label, code(paper_length(ctx, spec).hes_command() + " --set seed=S"),
                     " / ".join(pct(d, 2) for d in devs), pct(statistics.median(devs)),
                     f"{pct(min(devs))} to {pct(max(devs))}",
                     f"{sum(d >= ARGMIN_R2_DEV_MIN for d in devs)} of {len(devs)}",
                     pct(statistics.median(_worst_late(r) for r in mine), 1)])
    return "\n".join([
        f"In process, one torch thread, two jobs at a time, epochs: {ctx.epochs}, seeds "
        f"{', '.join(map(str, SEEDS))} (seed 100 is section 1's run). \"Fixed order\" rows keep the paper's "
        "batch order (`train.shuffle=false`); the others reshuffle every epoch (the default). "
        "\"Worst of the last epochs\" is the lowest dev accuracy among the last "
        f"{LAST_EPOCHS} epochs, as a median over the seeds: how deep the excursions go near the end.",
        "",
        table(["row", "command", "dev, seed by seed", "median dev", "range", f"seeds at {pct(ARGMIN_R2_DEV_MIN, 1)} "
               "or more", f"worst of the last {LAST_EPOCHS} epochs (median)"], rows),
    ])


def _worst_late(run: JobRun) -> float:
    return min(row["dev_accuracy"] for row in run.history[-LAST_EPOCHS:])
