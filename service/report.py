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
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

from coordinator.outputs import HISTORY_COLUMNS

Row = dict[str, float]
KINDS = ("full", "stochastic")


def rows_from(records: Sequence[Mapping[str, Any]], source: str) -> list[Row]:
    """History records (CSV strings or JSON numbers, None for a diverged value) as float rows."""
    if not records:
        raise ValueError(f"{source}: no finished epoch yet, nothing to plot")
    missing = [c for c in HISTORY_COLUMNS if c not in records[0]]
    if missing:
        raise ValueError(f"{source}: not a job history (no column {', '.join(missing)})")
    return [{c: math.nan if r[c] in (None, "") else float(r[c]) for c in HISTORY_COLUMNS} for r in records]


def read_history(path: Path) -> list[Row]:
    """The rows of DIR/history.csv, or of the CSV file `path` itself."""
    file = path / "history.csv" if path.is_dir() else path
    with file.open(newline="") as f:
        return rows_from(list(csv.DictReader(f)), str(file))


def describe(config: Mapping[str, Any]) -> str:
    """A title line from a job config: name, mode, r, K and sigma."""
    h = config.get("hybrid", {})
    return f"{config.get('name', 'job')}: {h.get('mode', '?')}, r={h.get('r', '?')}, K={h.get('k', '?')}, " \
           f"sigma={h.get('sigma', '?')}"


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


def _figure(title: str, ylabel: str, xlabel: str = "epoch") -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def loss_label(config: Mapping[str, Any]) -> str:
    """The y label of the loss plot: the job's train.loss."""
    return {"mse": "mean squared error"}.get(config.get("train", {}).get("loss", ""), "cross-entropy loss")


def plot_history(rows: Sequence[Row], title: str, loss: str = "cross-entropy loss") -> dict[str, Figure]:
    """The report figures, by file stem; each curve is one Line2D labelled as in its legend. A job without an
    accuracy (train.loss mse) gets no accuracy figure."""
    epochs = [r["epoch"] for r in rows]
    figs: dict[str, Figure] = {}

    fig, ax = _figure(f"Loss - {title}", loss)
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", ms=3, label="train")
    ax.plot(epochs, [r["dev_loss"] for r in rows], marker="o", ms=3, label="dev")
    ax.legend()
    figs["loss"] = fig

    if not all(math.isnan(r["train_accuracy"]) and math.isnan(r["dev_accuracy"]) for r in rows):
        fig, ax = _figure(f"Accuracy - {title}", "accuracy")
        ax.plot(epochs, [r["train_accuracy"] for r in rows], marker="o", ms=3, label="train")
        ax.plot(epochs, [r["dev_accuracy"] for r in rows], marker="o", ms=3, label="dev")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.legend()
        figs["accuracy"] = fig

    # Nothing moved: an in-process job (cluster.workers: 0) sends no messages.
    moved = rows[-1]["bytes_total"] > 0
    fig, ax = _figure(f"Payload bytes per round - {title}" + ("" if moved else "\nno payload: the job ran "
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
    fig, ax = _figure(f"Cumulative payload bytes - {title}\n{summary}", "bytes sent", xlabel="round")
    ax.plot(rounds, baseline, label="backprop baseline (every round full)", linestyle="--")
    ax.plot(rounds, sent, label="sent (all kinds, sync included)")
    ax.fill_between(rounds, sent, baseline, alpha=0.15, label="saved")
    ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.set_ylim(0, None if moved else 1000)
    ax.legend()
    figs["cumulative_bytes"] = fig
    return figs


def write_report(figs: Mapping[str, Figure], out: Path) -> list[Path]:
    """Save each figure as out/<name>.png; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def load(target: str, server: str | None) -> tuple[list[Row], str, Path, str]:
    """Rows, title, default output folder and loss label of a job folder (or history.csv), else of a job id on
    a server."""
    path = Path(target)
    if path.exists() or "/" in target:  # job ids have no slash; a path that does not exist fails here
        folder = path if path.is_dir() else path.parent
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        title = describe(config) if config else folder.name
        return read_history(path), title, folder / "report", loss_label(config)
    from service.client import Client

    client = Client(server)
    try:
        job = client.job(target)
        rows = rows_from(client.history(target).rows, f"job {target}")
    finally:
        client.close()
    return rows, describe(job.config), Path(f"report-{target}"), loss_label(job.config)


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
