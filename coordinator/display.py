"""How a job's progress reads on a terminal: one place for the progress bar's fields and byte counts.

Pure Python (no torch, no Ray), so the light CLI client imports it as well as `hes train`.
"""
from __future__ import annotations

from typing import Any


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def postfix(job: dict[str, Any]) -> dict[str, str]:
    """The bar's fields from a job document (GET /v1/jobs/{id}) or a coordinator's progress snapshot:
    epoch, loss (the last round's), dev accuracy, payload bytes so far."""
    p, m = job["progress"], job.get("metrics") or {}
    out = {"epoch": f"{p['epoch']}/{p['epochs']}"}
    if m.get("batch_loss") is not None:
        out["loss"] = f"{m['batch_loss']:.3f}"
    if m.get("dev_accuracy") is not None:
        out["dev_acc"] = f"{m['dev_accuracy']:.4f}"
    out["bytes"] = fmt_bytes((job.get("bytes") or {}).get("total", 0))
    return out
