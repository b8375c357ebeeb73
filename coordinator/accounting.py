"""Counters a job keeps: rounds, payload bytes by kind and direction, seconds, replica checks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.messages import Task
    from workers.state import Decision

KINDS = ("full", "stochastic", "sync")


@dataclass
class RoundBytes:
    """Payload bytes one round moved, summed over workers, by the kind they are accounted to; and, with
    cluster.full_rounds allreduce, the bytes the workers' ring sent and received among them (never through the
    coordinator)."""
    up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    ring_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    ring_received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

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
    dataset_bytes: int = 0  # the training data shipped to the workers' nodes (coordinator/ship_data.py)
    ring_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # allreduce, all workers
    ring_received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    seconds: dict[str, float] = field(default_factory=lambda: {"full_rounds": 0.0, "stochastic_rounds": 0.0,
                                                                "evaluation": 0.0, "total": 0.0})
    replica_checked: int = 0
    replica_mismatches: int = 0
    stale_results_dropped: int = 0
    worker_failures: int = 0  # worker actor deaths, each counted once (coordinator/membership.py)
    improvements: int = 0
    episodes: int = 0  # a black-box job's trial episodes (config objective), every worker's
    # [round, live workers, configured workers] from each round (1-based) where the job's workers changed
    membership: list[list[int]] = field(default_factory=list)
    # [rounds done when it was lost, round rewound to] for each time every replica was lost (allreduce) and the job
    # went back to its last checkpoint
    rewinds: list[list[int]] = field(default_factory=list)

    def add_bytes(self, rb: RoundBytes) -> None:
        for k in KINDS:
            self.up[k] += rb.up[k]
            self.down[k] += rb.down[k]
            self.ring_sent[k] += rb.ring_sent[k]
            self.ring_received[k] += rb.ring_received[k]

    def add_round(self, kind: str, rb: RoundBytes, seconds: float, improvements: int) -> None:
        self.rounds[kind] += 1
        self.add_bytes(rb)
        self.seconds[f"{kind}_rounds"] += seconds
        self.improvements += improvements

    def workers_changed(self, round_: int, live: int, configured: int) -> None:
        self.membership.append([round_, live, configured])

    def rewind_to(self, then: Counters, done: int, back_to: int) -> None:
        """Back to a checkpoint's count of the training done (`then`'s rounds, improvements, episodes): the rounds
        after it are redone. The bytes, seconds, faults and checks since stay counted: they were spent."""
        self.rounds, self.improvements, self.episodes = dict(then.rounds), then.improvements, then.episodes
        self.rewinds.append([done, back_to])

    @property
    def rewinds_note(self) -> str:
        """E.g. "every replica was lost after round 9: rewound to round 6 and redone"; empty when it never was."""
        return "; ".join(f"every replica was lost after round {done}: rewound to round {back} and redone"
                         for done, back in self.rewinds)

    @property
    def workers_note(self) -> str:
        """E.g. "ran on 1 of 2 workers in rounds 37 to 51"; empty when every round ran on every worker."""
        notes = []
        for k, (start, live, of) in enumerate(self.membership):
            if live == of:
                continue
            end = self.membership[k + 1][0] - 1 if k + 1 < len(self.membership) else None
            span = f"from round {start}" if end is None else f"in rounds {start} to {end}"
            notes.append(f"ran on {live} of {of} workers {span}")
        return "; ".join(notes)

    def bytes_doc(self) -> dict[str, Any]:
        """The `bytes` section of result.json (DESIGN.md), plus the data set shipped to the workers' nodes."""
        doc: dict[str, Any] = {k: {"up": self.up[k], "down": self.down[k]} for k in ("full", "stochastic")}
        doc["sync"] = self.up["sync"] + self.down["sync"]
        doc["total"] = sum(self.up.values()) + sum(self.down.values())
        doc["dataset"] = self.dataset_bytes
        doc["ring"] = {k: {"sent": self.ring_sent[k], "received": self.ring_received[k]} for k in ("full",)}
        return doc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counters:
        return cls(**d)  # a checkpoint from before the ring counters takes their defaults


def decision_label(d: Decision, fallback: str) -> str:
    """The kind a task's decision is accounted to: an array (a gradient, parameters) to full, a seed to stochastic."""
    from workers.messages import ARRAY_DECISIONS
    from workers.state import DecisionKind

    if d.kind == DecisionKind.ES:  # a stochastic round's seed weights (es, guided, zo)
        return "stochastic"
    if d.kind in ARRAY_DECISIONS:
        return "full"
    if d.kind == DecisionKind.NONE:
        return fallback
    return "stochastic"


def count_task(rb: RoundBytes, task: Task, header: bytes, decision: bytes, label: str, workers: int = 1) -> None:
    """`workers` workers' shares of a task, each the same: the header to the round's kind (its live-workers part
    to sync), the decision to `label`. Every pool counts a task this way (Ray's and the local backend's)."""
    from workers.messages import TASK_HEADER_BYTES

    rb.add(task.kind.label, "down", workers * TASK_HEADER_BYTES)
    rb.add("sync", "down", workers * (len(header) - TASK_HEADER_BYTES))
    rb.add(label, "down", workers * len(decision))
