"""Typed documents of a job, defined once: its status, the snapshot a coordinator reports while it runs,
its round events, and its result (result.json). The job, the coordinator actor, the service's runner,
store and REST schemas, the CLI and the progress bar all use these; their JSON is DESIGN.md's."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, field_serializer


class JobStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


class _Doc(BaseModel):
    # Documents stored by an older version may hold keys this one dropped: ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class ProgressInfo(_Doc):
    round: int = Field(default=0, description="rounds done")
    total_rounds: int = Field(default=0, description="epochs x rounds per epoch")
    epoch: int = Field(default=0, description="epochs done")
    epochs: int = 0
    fraction: float = Field(default=0.0, description="round / total_rounds, 0..1")


class Flow(_Doc):
    up: int = 0  # worker to coordinator
    down: int = 0


class RingFlow(_Doc):
    """Bytes the workers' allreduce (cluster.full_rounds allreduce) sent and received among them, all workers'."""
    sent: int = 0
    received: int = 0


class RingBytes(_Doc):
    full: RingFlow = Field(default_factory=RingFlow)


class ByteCounts(_Doc):
    """Payload bytes by round kind and direction (DESIGN.md's result.json), plus what the links carried of the
    data set for the workers (coordinator/ship_data.py: 0 when each worker read it on its node)."""
    full: Flow = Field(default_factory=Flow)
    stochastic: Flow = Field(default_factory=Flow)
    sync: int = 0
    total: int = 0
    dataset: int = 0
    ring: RingBytes = Field(default_factory=RingBytes)  # not in total: it never crosses the coordinator's link


class RoundCounts(_Doc):
    full: int = 0
    stochastic: int = 0


class Seconds(_Doc):
    total: float = 0.0
    full_rounds: float = 0.0
    stochastic_rounds: float = 0.0
    evaluation: float = 0.0


class ReplicaChecks(_Doc):
    checked: int = 0
    mismatches: int = 0


class WorkerCounts(_Doc):
    alive: int = 0
    restarting: int = 0


class SentBytes(_Doc):
    """Payload bytes by direction and kind (full, stochastic, sync): what hes_sent_bytes_total counts."""
    up: dict[str, int] = Field(default_factory=dict)
    down: dict[str, int] = Field(default_factory=dict)


class Snapshot(_Doc):
    """A job as its coordinator reports it while it runs (and as the service stores it)."""
    status: JobStatus = JobStatus.PENDING
    message: str = ""
    progress: ProgressInfo = Field(default_factory=ProgressInfo)
    metrics: dict[str, float | None] = Field(default_factory=dict)  # latest losses, accuracies; None: not finite
    rounds: RoundCounts = Field(default_factory=RoundCounts)
    bytes: ByteCounts = Field(default_factory=ByteCounts)
    seconds: Seconds = Field(default_factory=Seconds)
    improvements: int = 0
    replica_checks: ReplicaChecks = Field(default_factory=ReplicaChecks)
    restarts: int = 0  # times the job was restarted from a checkpoint after its coordinator died
    workers: WorkerCounts = Field(default_factory=WorkerCounts)
    worker_failures: int = 0
    sent: SentBytes = Field(default_factory=SentBytes)


class FinalMetrics(_Doc):
    """result.json's `final`: each split's accuracy (None for an mse job) and loss at the end. JSON holds the
    fields a job set, in this order: the six splits' for a finished job on a data set, none ({}) for one that
    failed first."""
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # `return` is a Python keyword: an alias
    train_accuracy: float | None = None
    train_loss: float | None = None
    dev_accuracy: float | None = None
    dev_loss: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    # a black-box job's (no data set: the fields above null): its evaluation episodes' return, mean and spread
    return_std: float | None = None
    return_: float | None = Field(default=None, alias="return")

    @property
    def evaluated(self) -> bool:
        """Whether the job reached its final evaluation (a FAILED job did not)."""
        return bool(self.model_fields_set)


_BLACK_BOX_FINAL = ("train_accuracy", "dev_accuracy", "test_accuracy", "train_loss", "dev_loss", "return_std", "return")


class JobResult(_Doc):
    """result.json: how a job ended and what it reached (`final` is empty for a FAILED job)."""
    status: JobStatus
    message: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    num_parameters: int | None = None
    num_workers: int = 0
    final: FinalMetrics = Field(default_factory=FinalMetrics)
    rounds: RoundCounts = Field(default_factory=RoundCounts)
    bytes: ByteCounts = Field(default_factory=ByteCounts)
    seconds: Seconds = Field(default_factory=Seconds)
    replica_checks: ReplicaChecks = Field(default_factory=ReplicaChecks)
    improvements: int = 0
    stale_results_dropped: int = 0
    worker_failures: int = 0
    restarts: int = 0
    episodes: int | None = None  # a black-box job's trial episodes (evaluations not counted); None: a data set

    @field_serializer("final")
    def _final(self, final: FinalMetrics, info: SerializationInfo) -> dict[str, Any]:
        doc = final.model_dump(mode=info.mode, by_alias=True, exclude_unset=True)
        if final.return_ is not None:  # a black-box job's keys in the order it has always written them
            doc = {k: doc[k] for k in _BLACK_BOX_FINAL if k in doc}
        return doc


@dataclass(frozen=True)
class RoundReport:
    """One finished round as the service's metrics observe it: payload bytes by kind and direction."""
    round: int
    kind: str  # full | stochastic
    seconds: float
    up: dict[str, int]
    down: dict[str, int]
    improvements: int
    loss: float
    episodes: int = 0  # a black-box job's trial episodes in this round, over every worker


@dataclass(frozen=True)
class Poll:
    """One look at a running job's coordinator: its snapshot, the round reports since the last look, and
    its result once its run is over; or why there is none (it did not answer in time, or it is gone)."""
    snapshot: Snapshot | None = None
    events: list[RoundReport] = field(default_factory=list)
    result: JobResult | None = None
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
