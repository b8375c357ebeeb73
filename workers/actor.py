"""The stateless Ray worker actor: a thin shell around `Replica` that speaks bytes.

Every call takes and returns the wire encoding of workers/messages.py, so what the coordinator counts is
exactly what crossed. A restarted actor comes back at version 0 and asks for a sync.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import ray
import torch

from workers.hybrid import Hyper
from workers.messages import decode_sync, decode_task, encode_result
from workers.models import Model
from workers.replica import Replica, Schedule


@dataclass(frozen=True)
class WorkerSpec:
    model: Model
    hyper: Hyper
    schedule: Schedule
    job_seed: int
    k: int
    combine: str
    worker: int
    n_workers: int
    threads: int


@ray.remote
class WorkerActor:
    def __init__(self, spec: WorkerSpec, data: tuple[np.ndarray, np.ndarray]) -> None:
        torch.set_num_threads(max(1, spec.threads))
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        x_train, y_train = data
        self.replica = Replica(spec.model, x_train, y_train, spec.hyper, spec.schedule, spec.job_seed, spec.k,
                               spec.combine, spec.worker, spec.n_workers, device)
        self.replica.start(spec.model.initial_parameters(spec.job_seed))
        self.device = device

    # No task events for the round calls: Ray would report each one to the GCS, about 1.1 kB per worker per
    # round, more than 50x a stochastic round's payload (BENCHMARKS.md, section 6). `info` and `sync` keep them.
    @ray.method(enable_task_events=False)
    def step(self, header: bytes, decision: bytes) -> tuple[bytes, np.ndarray | None, bytes]:
        task = decode_task(header, decision)
        return encode_result(self.replica.handle(task), task.kind)

    def sync(self, data: bytes) -> None:
        self.replica.sync(decode_sync(data))

    def info(self) -> dict[str, object]:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "device": self.device,
                "version": None if self.replica.state is None else self.replica.state.version}
