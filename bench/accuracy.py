"""Section `table`: the paper's Fig. 7 on MNIST in process, beside the paper's figures and the stale control."""
from __future__ import annotations

from dataclasses import dataclass

from common import Context, JobRun, JobSpec, code, paper_length, pct, run_job, signed, table, verdict

# Paper Fig. 7 (seed/hybrid-es-paper.md), train and dev accuracy in %, sigma^2 = 1.25, K = 10.
PAPER_FIG7: dict[str, tuple[float, float]] = {
    "reference": (99.54, 96.57), "r2": (96.80, 94.21), "r3": (95.34, 93.06), "r4": (94.21, 92.23),
}
# Issue 2, "What will be checked" (dev accuracy, fractions).
REFERENCE_DEV_MIN = 0.960
ARGMIN_R2_DEV_MIN = 0.950
NOTEBOOK_R2_WITHIN = 0.010  # of the paper's 94.21%
LAST_EPOCHS = 5  # the dev accuracy's range over the last epochs shows how much the final figure is luck
SWING = 0.02  # a range wider than this gets a sentence of its own


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    spec: JobSpec
    paper: str | None  # key into PAPER_FIG7


ROWS = (
    Row("reference", "Reference (backprop every round)", JobSpec("paper-reference"), "reference"),
    Row("r2", "H-ES r=2, argmin", JobSpec("paper-hes-r2"), "r2"),
    Row("r3", "H-ES r=3, argmin", JobSpec("paper-hes-r3"), "r3"),
    Row("r4", "H-ES r=4, argmin", JobSpec("paper-hes-r4"), "r4"),
    Row("nb2", "H-ES r=2, notebook", JobSpec("paper-hes-r2", ("hybrid.combine=notebook",)), "r2"),
    Row("stale2", "Stale control r=2 (no search)", JobSpec("paper-hes-r2", ("hybrid.mode=stale",)), None),
    Row("stale4", "Stale control r=4 (no search)", JobSpec("paper-hes-r4", ("hybrid.mode=stale",)), None),
    Row("reference_fixed", "Reference, fixed order", JobSpec("paper-reference", ("train.shuffle=false",)),
        "reference"),
    Row("r2_fixed", "H-ES r=2, argmin, fixed order", JobSpec("paper-hes-r2", ("train.shuffle=false",)), "r2"),
    Row("nb2_fixed", "H-ES r=2, notebook, fixed order",
        JobSpec("paper-hes-r2", ("hybrid.combine=notebook", "train.shuffle=false")), "r2"),
)


def run(ctx: Context) -> str:
    runs = {row.key: run_job(ctx, paper_length(ctx, row.spec)) for row in ROWS}
    return render(ctx, runs)


def _dev(runs: dict[str, JobRun], key: str) -> float:
    return runs[key].final.dev_accuracy


def render(ctx: Context, runs: dict[str, JobRun]) -> str:
    rows = []
    for row in ROWS:
        r, f = runs[row.key], runs[row.key].final
        paper = PAPER_FIG7.get(row.paper or "")
        rows.append([
            row.label, code(r.spec.hes_command()), pct(f.train_accuracy), pct(f.dev_accuracy),
            pct(f.test_accuracy), r.dev_range(LAST_EPOCHS),
            f"{paper[0]:.2f}% / {paper[1]:.2f}%" if paper else "none (control)",
            signed(100 * f.dev_accuracy - paper[1], unit=" pt") if paper else "",
            f"{r.result.rounds.full} / {r.result.rounds.stochastic}", f"{r.wall_seconds:.0f}",
        ])
    parts = [
        f"In process (`cluster.workers: 0`, one torch thread), seed 100, MNIST from $HES_MNIST_DIR, "
        f"epochs: {ctx.epochs} of 50 minibatches of 1000. \"Fixed order\" is `train.shuffle=false`: the same "
        "batch order every epoch, as the paper's runs had it; the other rows reshuffle every epoch (the "
        "project's default). The paper reports no test accuracy.",
        "",
        table(["row", "command", "train", "dev", "test", f"dev, last {LAST_EPOCHS} epochs",
               "paper train / dev (Fig. 7)", "dev vs paper",
               "rounds full / stochastic", "wall s"], rows),
        "",
        "Checks (issue 2):",
        "",
    ]
    ref, r2, nb2 = _dev(runs, "reference"), _dev(runs, "r2"), _dev(runs, "nb2")
    paper_r2 = PAPER_FIG7["r2"][1] / 100
    parts += [
        f"- reference dev {pct(ref)} (at least {pct(REFERENCE_DEV_MIN, 1)}): {verdict(ref >= REFERENCE_DEV_MIN)}.",
        f"- H-ES r=2 argmin dev {pct(r2)} (at least {pct(ARGMIN_R2_DEV_MIN, 1)}): "
        f"{verdict(r2 >= ARGMIN_R2_DEV_MIN)}.",
        f"- H-ES r=2 notebook dev {pct(nb2)} (within {100 * NOTEBOOK_R2_WITHIN:.0f} point of the paper's "
        f"{pct(paper_r2)}): {verdict(abs(nb2 - paper_r2) <= NOTEBOOK_R2_WITHIN)}.",
        "",
        "Side by side (dev accuracy, one seed each, so differences of a few tenths of a point are within what "
        "another seed could change); **loses** marks where the paper's method is behind:",
        "",
        *_losses(runs),
        *[f"- {row.label}: the dev accuracy swung over {100 * runs[row.key].dev_swing(LAST_EPOCHS):.1f} points "
          f"within the last {LAST_EPOCHS} epochs ({runs[row.key].dev_range(LAST_EPOCHS)}), so its final figure "
          "depends on the epoch the run stops at." for row in ROWS if runs[row.key].dev_swing(LAST_EPOCHS) > SWING],
    ]
    if ctx.epochs != 30:
        parts += ["", f"**Not the paper's length**: run with `--epochs {ctx.epochs}`; the paper trains 30 epochs."]
    return "\n".join(parts)


def _compare(a_label: str, a: float, b_label: str, b: float) -> str:
    diff = 100 * (a - b)
    if diff < 0:
        return f"- {a_label} **loses** to {b_label}: dev {pct(a)} vs {pct(b)} ({diff:+.2f} points)."
    if diff == 0:
        return f"- {a_label} **ties** {b_label}: dev {pct(a)} both."
    return f"- {a_label} beats {b_label}: dev {pct(a)} vs {pct(b)} ({diff:+.2f} points)."


def _losses(runs: dict[str, JobRun]) -> list[str]:
    ref = _dev(runs, "reference")
    out = [
        _compare("H-ES r=2 argmin (the search)", _dev(runs, "r2"), "the stale control at r=2 (no search)",
                 _dev(runs, "stale2")),
        _compare("H-ES r=4 argmin (the search)", _dev(runs, "r4"), "the stale control at r=4 (no search)",
                 _dev(runs, "stale4")),
        _compare("H-ES r=2 notebook (the paper's code)", _dev(runs, "nb2"), "the stale control at r=2",
                 _dev(runs, "stale2")),
        _compare("H-ES r=2 argmin, fixed order", _dev(runs, "r2_fixed"), "the same with reshuffling",
                 _dev(runs, "r2")),
    ]
    for key, label in (("r2", "r=2"), ("r3", "r=3"), ("r4", "r=4")):
        out.append(_compare(f"H-ES {label} argmin", _dev(runs, key), "the backprop reference", ref))
    return out
