"""`hes report DIR1 DIR2 ...`: several jobs in one picture, to choose between methods.

    hes report runs/seedonly runs/localsgd runs/stale --out plots     # folders (or history.csv files) or job ids

Four figures, one curve per job:
    accuracy_vs_epoch.png   dev accuracy per epoch
    accuracy_vs_bytes.png   dev accuracy against the payload bytes the job had sent by then (all workers, up and
                            down, sync included; log scale)
    loss_vs_epoch.png       dev loss per epoch (train loss where a job has no dev loss)
    loss_vs_bytes.png       the same against bytes
A job without accuracy (a loss-only history: the column missing or empty) is left out of the accuracy figures,
and a job that sent nothing (in-process, cluster.workers: 0) out of the bytes figures; each figure names the
jobs it leaves out. When no job has accuracy, the accuracy figures are not written.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, NullFormatter, PercentFormatter

from service.figures import figure
from service.history import describe, fetch_history, loss_label

REQUIRED = ("epoch", "bytes_total")


@dataclass(frozen=True)
class Series:
    """One job's history as the overlay reads it: any columns, numbers (NaN for an empty or missing value)."""
    label: str
    rows: list[dict[str, float]]
    loss: str = "cross-entropy loss"  # the y label of its loss (service.report.loss_label of its train.loss)

    def column(self, name: str) -> list[float]:
        return [r.get(name, math.nan) for r in self.rows]

    def has(self, name: str) -> bool:
        return any(math.isfinite(v) for v in self.column(name))


def _number(text: str | float | None) -> float:
    if text in (None, ""):
        return math.nan
    try:
        return float(text)  # type: ignore[arg-type]
    except ValueError:
        return math.nan


def series_from(records: Sequence[dict[str, object]], label: str, source: str,
                loss: str = "cross-entropy loss") -> Series:
    if not records:
        raise ValueError(f"{source}: no finished epoch yet, nothing to plot")
    missing = [c for c in REQUIRED if c not in records[0]]
    if missing:
        raise ValueError(f"{source}: not a job history (no column {', '.join(missing)})")
    return Series(label, [{k: _number(v) for k, v in r.items()} for r in records], loss)  # type: ignore[arg-type]


def read_series(target: str, server: str | None) -> Series:
    """A job folder (or its history.csv), labelled with its folder name and config; else a job id on a server."""
    h = fetch_history(target, server)
    name = target if h.folder is None else h.folder.name
    label = f"{name} ({describe(h.config)})" if h.config or h.folder is None else name
    return series_from(h.records, label, h.source, loss_label(h.config))


def _loss_column(s: Series) -> str:
    return "dev_loss" if s.has("dev_loss") else "train_loss"


def plot_overlay(jobs: Sequence[Series]) -> dict[str, Figure]:
    """The overlay figures by file stem; each curve is one Line2D labelled with its job."""
    figs: dict[str, Figure] = {}
    if not any(s.has("dev_accuracy") for s in jobs):
        metrics = ["loss"]  # every job is loss-only
    else:
        metrics = ["accuracy", "loss"]
    for metric in metrics:
        for xname in ("epoch", "bytes"):
            shown, left_out = [], []
            for s in jobs:
                if metric == "accuracy" and not s.has("dev_accuracy"):
                    left_out.append(f"{s.label}: no accuracy")
                elif xname == "bytes" and not (s.has("bytes_total") and max(s.column("bytes_total")) > 0):
                    left_out.append(f"{s.label}: sent no bytes")
                else:
                    shown.append(s)
            title = f"{'Dev accuracy' if metric == 'accuracy' else 'Loss'} against {xname}"
            if left_out:
                title += "\nleft out: " + "; ".join(left_out)
            losses = sorted({s.loss for s in shown})  # jobs of different losses share the axis: say so
            loss = losses[0] if len(losses) == 1 else "loss (" + ", ".join(losses) + ": not comparable)" if losses \
                else "loss"
            fig, ax = figure(title, "dev accuracy" if metric == "accuracy" else loss,
                              "epoch" if xname == "epoch" else "payload bytes sent (all workers, up + down)")
            for s in shown:
                y = s.column("dev_accuracy" if metric == "accuracy" else _loss_column(s))
                x = s.column("epoch") if xname == "epoch" else s.column("bytes_total")
                ax.plot(x, y, marker="o", ms=3, label=s.label)
            if shown:
                ax.legend(fontsize=7)
                if xname == "bytes":
                    ax.set_xscale("log")  # seed-only rounds send bytes, full rounds megabytes
                    ax.xaxis.set_minor_formatter(NullFormatter())
            if xname == "bytes":
                ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
            if metric == "accuracy":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            figs[f"{metric}_vs_{xname}"] = fig
    return figs
