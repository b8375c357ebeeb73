"""What a job leaves in its output folder: result.json, history.csv, model.safetensors, checkpoint.npz."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

HISTORY_COLUMNS = [
    "epoch", "round", "train_loss", "train_accuracy", "dev_loss", "dev_accuracy",
    "rounds_full", "rounds_stochastic", "bytes_full_up", "bytes_full_down", "bytes_stochastic_up",
    "bytes_stochastic_down", "bytes_sync", "bytes_total", "improvements", "seconds",
]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    _atomic_write(path, (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode())


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_model(path: Path, named: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save

    _atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in named.items()}, metadata=metadata))


def save_checkpoint(folder: Path, theta: np.ndarray, grad: np.ndarray | None, meta: dict[str, Any]) -> None:
    """theta, grad and the loop's counters; `hes train --resume` continues from it."""
    tmp = folder / "checkpoint.tmp.npz"
    arrays = {"theta": theta, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if grad is not None:
        arrays["grad"] = grad
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, folder / "checkpoint.npz")


def load_checkpoint(folder: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    path = folder / "checkpoint.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    with np.load(path) as z:
        grad = z["grad"].copy() if "grad" in z.files else None
        return z["theta"].copy(), grad, json.loads(z["meta"].tobytes().decode())
