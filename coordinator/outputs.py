"""What a job leaves in its output folder: result.json, history.csv, model.safetensors, checkpoint.npz."""
from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.accounting import Counters

HISTORY_COLUMNS = [
    "epoch", "round", "train_loss", "train_accuracy", "dev_loss", "dev_accuracy",
    "rounds_full", "rounds_stochastic", "bytes_full_up", "bytes_full_down", "bytes_stochastic_up",
    "bytes_stochastic_down", "bytes_sync", "bytes_total", "improvements", "seconds",
]


class OutputError(OSError):
    """An output could not be written (a full disk, a read-only folder); the message names the original error,
    its file and the output, e.g. "OSError: [Errno 28] No space left on device: '/o/x.tmp' while writing
    result.json". No partial file is left."""


def _atomic(path: Path, what: str, write: Callable[[Path], None], tmp: Path | None = None) -> None:
    """write(tmp), then rename it over `path`; on any failure remove tmp, and raise an OSError as OutputError."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            # a write() on a full disk names no file: name the one being written
            cause = err if err.filename or err.errno is None else OSError(err.errno, err.strerror, str(tmp))
            raise OutputError(f"{type(cause).__name__}: {cause} while writing {what}") from err
        raise


def _atomic_write(path: Path, data: bytes, what: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    _atomic(path, what, write)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    _atomic_write(path, (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode(), path.name)


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, text.encode(), path.name)


# hybrid.diagnostics: per-epoch means over its stochastic rounds, after the columns above (coordinator/job.py)
DIAGNOSTIC_COLUMNS = ["diag_cosine", "diag_beat_share"]
# a black-box job's (config objective): the evaluation return's mean and spread, and the episodes played so far
RETURN_COLUMNS = ["return_mean", "return_std", "episodes"]


def write_history(path: Path, rows: list[dict[str, Any]], extra: list[str] | None = None) -> None:
    """history.csv: HISTORY_COLUMNS, then the `extra` columns (e.g. DIAGNOSTIC_COLUMNS) when a job has them."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS + (extra or []), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    _atomic(path, path.name, write)


def write_model(path: Path, named: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save

    _atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in named.items()}, metadata=metadata),
                  "the model")


@dataclass(frozen=True)
class CheckpointMeta:
    """What checkpoint.npz keeps besides the arrays, as JSON: the rounds done, the history rows, the counters."""
    version: int  # rounds applied to the checkpoint's theta
    history: list[dict[str, Any]]  # history.csv's rows so far
    counters: Counters
    obs: list[float] | None = None  # objective.normalize: the observation totals (float64, exact through JSON)

    def to_json(self) -> bytes:
        doc = {"version": self.version, "history": self.history, "counters": self.counters.to_dict()}
        return json.dumps(doc if self.obs is None else {**doc, "obs": self.obs}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CheckpointMeta:
        doc = json.loads(raw.decode())
        return cls(int(doc["version"]), doc["history"], Counters.from_dict(doc["counters"]), doc.get("obs"))


def save_checkpoint(folder: Path, theta: np.ndarray, grad: np.ndarray | None, meta: CheckpointMeta,
                    history: tuple[np.ndarray, ...] = ()) -> None:
    """theta, grad, the gradients guided trials keep (oldest first) and the loop's counters; `hes train
    --resume` continues from it."""
    arrays = {"theta": theta, "meta": np.frombuffer(meta.to_json(), dtype=np.uint8)}
    if grad is not None:
        arrays["grad"] = grad
    if history:
        arrays["history"] = np.stack(history)
    _atomic(folder / "checkpoint.npz", "the checkpoint",
            lambda tmp: np.savez(tmp, **arrays),  # type: ignore[arg-type]
            tmp=folder / "checkpoint.tmp.npz")  # np.savez would add .npz to any other name


def load_checkpoint(folder: Path) -> tuple[np.ndarray, np.ndarray | None, CheckpointMeta]:
    path = folder / "checkpoint.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    with np.load(path) as z:
        grad = z["grad"].copy() if "grad" in z.files else None
        return z["theta"].copy(), grad, CheckpointMeta.from_json(z["meta"].tobytes())


def load_history(folder: Path) -> tuple[np.ndarray, ...]:
    """The checkpoint's gradient history (guided trials), oldest first; () when it has none."""
    with np.load(folder / "checkpoint.npz") as z:
        return tuple(np.array(h, copy=True) for h in z["history"]) if "history" in z.files else ()
