"""`hes report JOB_OR_DIR`: PNG plots of a job's per-epoch history (history.csv, or the service's copy).

    hes report runs/r2                          # a job folder; writes runs/r2/report/*.png
    hes report runs/a runs/b runs/c --out cmp   # several jobs overlaid (service/overlay.py)
    hes report 3f9c0e2a --server http://10.0.0.5:8000 --out plots   # a job of `hes serve` ($HES_API_TOKEN)

Four figures (three for a job without an accuracy, train.loss mse):
    loss.png              train and dev loss per epoch (the paper's Fig. 9)
    accuracy.png          train and dev accuracy per epoch (the paper's Fig. 10)
    bytes_per_round.png   payload bytes per round of each kind, per epoch (log scale)
    cumulative_bytes.png  payload bytes sent so far beside the backprop baseline: the same rounds had every
                          one been a full round, at the job's own measured bytes per full round
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

from service.figures import figure, write_report
from service.history import Row, describe, fetch_history, loss_label, rows_from

KINDS = ("full", "stochastic")


def bytes_per_round(rows: Sequence[Row], kind: str) -> list[float]:
    """Bytes (up + down, all workers) per round of `kind` within each epoch; NaN for an epoch without one.

    The history's counters are cumulative, so an epoch's value is its growth in bytes over its growth in
    rounds, e.g. 2 workers x (6 + 9 B down + 7 + 14 B up) = 72 B for a stochastic round.
    """
    out, bytes_before, rounds_before = [], 0.0, 0.0
    for r in rows:
        sent, rounds = r[f"bytes_{kind}_up"] + r[f"bytes_{kind}_down"], r[f"rounds_{kind}"]
        out.append((sent - bytes_before) / (rounds - rounds_before) if rounds > rounds_before else math.nan)
        bytes_before, rounds_before = sent, rounds
    return out


def backprop_baseline(rows: Sequence[Row]) -> list[float]:
    """Bytes the rounds done by each epoch's end would have cost had every round been full.

    The cost of one full round is measured, not modelled: full-kind bytes / full rounds over the whole
    history (NaN when the job ran no full round).
    """
    last = rows[-1]
    full_bytes = last["bytes_full_up"] + last["bytes_full_down"]
    per_full = full_bytes / last["rounds_full"] if last["rounds_full"] > 0 else math.nan
    return [(r["rounds_full"] + r["rounds_stochastic"]) * per_full for r in rows]


def plot_history(rows: Sequence[Row], title: str, loss: str = "cross-entropy loss") -> dict[str, Figure]:
    """The report figures, by file stem; each curve is one Line2D labelled as in its legend. A job without an
    accuracy (train.loss mse) gets no accuracy figure."""
    epochs = [r["epoch"] for r in rows]
    figs: dict[str, Figure] = {}

    fig, ax = figure(f"Loss - {title}", loss)
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", ms=3, label="train")
    ax.plot(epochs, [r["dev_loss"] for r in rows], marker="o", ms=3, label="dev")
    ax.legend()
    figs["loss"] = fig

    if not all(math.isnan(r["train_accuracy"]) and math.isnan(r["dev_accuracy"]) for r in rows):
        fig, ax = figure(f"Accuracy - {title}", "accuracy")
        ax.plot(epochs, [r["train_accuracy"] for r in rows], marker="o", ms=3, label="train")
        ax.plot(epochs, [r["dev_accuracy"] for r in rows], marker="o", ms=3, label="dev")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.legend()
        figs["accuracy"] = fig

    # Nothing moved: an in-process job (cluster.workers: 0) sends no messages.
    moved = rows[-1]["bytes_total"] > 0
    fig, ax = figure(f"Payload bytes per round - {title}" + ("" if moved else "\nno payload: the job ran "
                      "in-process"), "bytes per round (up + down, all workers)")
    for kind in KINDS:
        if rows[-1][f"rounds_{kind}"] > 0:
            ax.plot(epochs, bytes_per_round(rows, kind), marker="o", ms=3, label=kind)
    if moved:
        ax.set_yscale("log")  # a stochastic round moves a few dozen bytes, a full one the whole model
    else:
        ax.set_ylim(0, 1000)
    ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.legend()
    figs["bytes_per_round"] = fig

    rounds = [0.0] + [r["round"] for r in rows]
    sent = [0.0] + [r["bytes_total"] for r in rows]
    baseline = [0.0] + backprop_baseline(rows)
    share = sent[-1] / baseline[-1] if baseline[-1] > 0 else math.nan
    summary = (f"sent {sent[-1] / 1e6:.3g} MB = {share:.1%} of the backprop baseline ({baseline[-1] / 1e6:.3g} MB)"
               if moved else "no payload: the job ran in-process")
    fig, ax = figure(f"Cumulative payload bytes - {title}\n{summary}", "bytes sent", xlabel="round")
    ax.plot(rounds, baseline, label="backprop baseline (every round full)", linestyle="--")
    ax.plot(rounds, sent, label="sent (all kinds, sync included)")
    ax.fill_between(rounds, sent, baseline, alpha=0.15, label="saved")
    ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.set_ylim(0, None if moved else 1000)
    ax.legend()
    figs["cumulative_bytes"] = fig
    return figs


def load(target: str, server: str | None) -> tuple[list[Row], str, Path, str]:
    """Rows, title, default output folder and loss label of a job folder (or history.csv), else of a job id on
    a server."""
    h = fetch_history(target, server)
    rows = rows_from(h.records, h.source)
    if h.folder is None:
        return rows, describe(h.config), Path(f"report-{target}"), loss_label(h.config)
    return rows, describe(h.config) if h.config else h.folder.name, h.folder / "report", loss_label(h.config)


def run(args: argparse.Namespace) -> int:
    """`hes report`: write the PNGs and list them; 2 with a message when the history cannot be had."""
    from service.client import ServiceError

    targets = args.target if isinstance(args.target, list) else [args.target]
    if len(targets) > 1:
        return run_overlay(targets, args)
    try:
        rows, title, default_out, loss = load(targets[0], args.server)
    except (OSError, ValueError, KeyError, ServiceError) as err:
        print(f"hes report: {err}", file=sys.stderr)
        return 2
    for path in write_report(plot_history(rows, title, loss), Path(args.out) if args.out else default_out):
        print(path)
    return 0


def run_overlay(targets: list[str], args: argparse.Namespace) -> int:
    """`hes report DIR1 DIR2 ...`: the overlay figures of service/overlay.py, in --out (default report-overlay)."""
    from service.client import ServiceError
    from service.overlay import plot_overlay, read_series

    try:
        jobs = [read_series(t, args.server) for t in targets]
    except (OSError, ValueError, KeyError, ServiceError) as err:
        print(f"hes report: {err}", file=sys.stderr)
        return 2
    for path in write_report(plot_overlay(jobs), Path(args.out) if args.out else Path("report-overlay")):
        print(path)
    return 0
