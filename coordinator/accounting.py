"""Counters a job keeps: rounds, payload bytes by kind and direction, seconds, replica checks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("full", "stochastic", "sync")


@dataclass
class RoundBytes:
    """Payload bytes one round moved, summed over workers, by the kind they are accounted to."""
    up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def add(self, kind: str, direction: str, n: int) -> None:
        getattr(self, direction)[kind] += n

    @property
    def total(self) -> int:
        return sum(self.up.values()) + sum(self.down.values())


@dataclass
class Counters:
    rounds: dict[str, int] = field(default_factory=lambda: {"full": 0, "stochastic": 0})
    up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dataset_bytes: int = 0  # the one-time transfer of the training data into the object store
    seconds: dict[str, float] = field(default_factory=lambda: {"full_rounds": 0.0, "stochastic_rounds": 0.0,
                                                                "evaluation": 0.0, "total": 0.0})
    replica_checked: int = 0
    replica_mismatches: int = 0
    stale_results_dropped: int = 0
    worker_failures: int = 0
    improvements: int = 0

    def add_bytes(self, rb: RoundBytes) -> None:
        for k in KINDS:
            self.up[k] += rb.up[k]
            self.down[k] += rb.down[k]

    def add_round(self, kind: str, rb: RoundBytes, seconds: float, improvements: int) -> None:
        self.rounds[kind] += 1
        self.add_bytes(rb)
        self.seconds[f"{kind}_rounds"] += seconds
        self.improvements += improvements

    def bytes_doc(self) -> dict[str, Any]:
        """The `bytes` section of result.json (DESIGN.md), plus the dataset's one-time transfer."""
        doc: dict[str, Any] = {k: {"up": self.up[k], "down": self.down[k]} for k in ("full", "stochastic")}
        doc["sync"] = self.up["sync"] + self.down["sync"]
        doc["total"] = sum(self.up.values()) + sum(self.down.values())
        doc["dataset"] = self.dataset_bytes
        return doc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counters:
        return cls(**d)
