"""How a job's progress reads on a terminal: one place for the progress bar's fields and byte counts.

Pure Python (no torch, no Ray), so the light CLI client imports it as well as `hes train`.
"""
from __future__ import annotations

from collections.abc import Mapping

from coordinator.documents import ProgressInfo


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def postfix(p: ProgressInfo, m: Mapping[str, float | None], total_bytes: int) -> dict[str, str]:
    """The bar's fields from a coordinator's snapshot or a job of GET /v1/jobs/{id} (both typed): epoch,
    loss (the last round's), dev accuracy, payload bytes so far; a black-box job's best trial return of the last
    round and its evaluation return instead of the loss and accuracy."""
    out = {"epoch": f"{p.epoch}/{p.epochs}"}
    if (loss := m.get("batch_loss")) is not None:
        out["loss"] = f"{loss:.3f}"
    if (acc := m.get("dev_accuracy")) is not None:
        out["dev_acc"] = f"{acc:.4f}"
    if (trial := m.get("trial_return")) is not None:
        out["trial_return"] = f"{trial:.1f}"
    if (ret := m.get("return")) is not None:
        out["return"] = f"{ret:.1f}"
    out["bytes"] = fmt_bytes(total_bytes)
    return out
