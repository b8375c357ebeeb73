"""What a job leaves in its output folder: result.json, history.csv, model.safetensors, checkpoint.npz."""
from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable, Mapping
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


_SCORE_COLUMNS = ["train_loss", "train_accuracy", "dev_loss", "dev_accuracy"]  # a black-box job has none
_COUNTS = {"epoch", "round", "rounds_full", "rounds_stochastic", "bytes_full_up", "bytes_full_down",
           "bytes_stochastic_up", "bytes_stochastic_down", "bytes_sync", "bytes_total", "improvements", "episodes"}


@dataclass(frozen=True)
class HistoryRow:
    """One epoch of history.csv: HISTORY_COLUMNS, then DIAGNOSTIC_COLUMNS for a job with hybrid.diagnostics, or
    RETURN_COLUMNS for a black-box job (whose losses and accuracies are empty). Accuracies are None for an mse job;
    losses may be NaN. `record` writes it, `from_record` reads it back."""
    epoch: int
    round: int
    rounds_full: int
    rounds_stochastic: int
    bytes_full_up: int
    bytes_full_down: int
    bytes_stochastic_up: int
    bytes_stochastic_down: int
    bytes_sync: int
    bytes_total: int
    improvements: int
    seconds: float
    train_loss: float | None = None
    train_accuracy: float | None = None
    dev_loss: float | None = None
    dev_accuracy: float | None = None
    return_mean: float | None = None  # None: a job on a data set
    return_std: float | None = None
    episodes: int | None = None
    diag_cosine: float | None = None  # None: the job has no diagnostics
    diag_beat_share: float | None = None

    def record(self) -> dict[str, Any]:
        """The row by column name, as the checkpoint keeps it and history.csv writes it: the scores after epoch and
        round (losses and accuracies, or a black-box job's return columns), diagnostics only where the job has
        them."""
        scores = RETURN_COLUMNS if self.return_mean is not None else _SCORE_COLUMNS
        rest = [c for c in HISTORY_COLUMNS[2:] if c not in _SCORE_COLUMNS]
        rec = {c: getattr(self, c) for c in [*HISTORY_COLUMNS[:2], *scores, *rest]}
        rec.update({c: getattr(self, c) for c in DIAGNOSTIC_COLUMNS if getattr(self, c) is not None})
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> HistoryRow:
        """A row from history.csv's strings or the checkpoint's JSON numbers ("" or None, or no such column: no
        value)."""
        def value(column: str) -> int | float | None:
            v = rec.get(column)
            if v is None or v == "":
                return None
            return int(v) if column in _COUNTS else float(v)

        return cls(**{c: value(c) for c in ROW_COLUMNS})  # type: ignore[arg-type]


ROW_COLUMNS = HISTORY_COLUMNS + RETURN_COLUMNS + DIAGNOSTIC_COLUMNS  # every column a history row can have


def write_history(path: Path, rows: list[HistoryRow], extra: list[str] | None = None) -> None:
    """history.csv: HISTORY_COLUMNS, then the `extra` columns (e.g. DIAGNOSTIC_COLUMNS) when a job has them."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS + (extra or []), extrasaction="ignore")
            w.writeheader()
            w.writerows(row.record() for row in rows)

    _atomic(path, path.name, write)


def write_model(path: Path, named: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save

    _atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in named.items()}, metadata=metadata),
                  "the model")


@dataclass(frozen=True)
class CheckpointMeta:
    """What checkpoint.npz keeps besides the arrays, as JSON: the rounds done, the history rows, the counters."""
    version: int  # rounds applied to the checkpoint's theta
    history: list[HistoryRow]  # history.csv's rows so far
    counters: Counters
    obs: list[float] | None = None  # objective.normalize: the observation totals (float64, exact through JSON)

    def to_json(self) -> bytes:
        doc = {"version": self.version, "history": [row.record() for row in self.history],
               "counters": self.counters.to_dict()}
        return json.dumps(doc if self.obs is None else {**doc, "obs": self.obs}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CheckpointMeta:
        doc = json.loads(raw.decode())
        return cls(int(doc["version"]), [HistoryRow.from_record(r) for r in doc["history"]],
                   Counters.from_dict(doc["counters"]), doc.get("obs"))


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
