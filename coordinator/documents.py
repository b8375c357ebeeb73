"""Typed documents that cross from a job's coordinator to its drivers (the service, `hes train`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Poll:
    """One look at a running job's coordinator: its snapshot, the round events since the last look, and its
    result once its run is over; or why there is none (it did not answer in time, or it is gone)."""
    snapshot: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    died: str | None = None
    timed_out: bool = False


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # terminal colours and cursor moves (Ray colours its errors)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain(text: str) -> str:
    """A message fit for a user and a JSON document: no escape sequences, no control bytes but newlines."""
    return _CONTROL.sub("", _ANSI.sub("", text)).strip()


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's text, plain."""
    lines = [line.strip() for line in plain(str(err)).splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""


def restarts_note(restarts: int) -> str:
    """What a job's message says of its restarts from a checkpoint ('' for none)."""
    if not restarts:
        return ""
    return f"restarted {restarts} time{'s' if restarts > 1 else ''} from its checkpoint after its coordinator died"
