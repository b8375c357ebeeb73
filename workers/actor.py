"""The stateless Ray worker actor: a thin shell around `Replica` that speaks bytes.

A worker that Ray gave a GPU (cluster.gpus_per_worker > 0) keeps its replica on CUDA: parameters, the training
set and the trials' noise (workers/rng.py draws bitwise the same numbers there as on any CPU). Its replica stays
bitwise equal to the CPU ones: every update is elementwise arithmetic on the seed's noise, the broadcast gradient
and scalars, each operation correctly rounded on both devices; its matmuls differ from a CPU's in the last bits,
which changes its trial costs and gradients a little (so possibly which seed wins), never how a decision applies.

Every call takes and returns the wire encoding of workers/messages.py, so what the coordinator counts is
exactly what crossed. A restarted actor comes back at version 0 and asks for a sync, which also tells it the
job's live workers (among whom it takes its shard of each batch, see workers/replica.py).

A worker on the coordinator's own Ray node may get a shared-memory buffer (`WorkerSpec.shared`, see
coordinator/shared_buffers.py): it then writes a full round's gradient (or an average round's parameters) there
and returns `SHARED` in place of the array; the bytes are the same, counted the same, but they skip Ray's
serialization and the reply's 4P bytes through gRPC. When the buffer cannot be opened (a restarted actor:
the coordinator has unlinked its name by then), the worker returns the array through Ray as any other.

A worker builds its training arrays on its own node when it can, or takes the shipped ones (workers/node_data.py,
`WorkerData`).

With cluster.full_rounds allreduce the job's live workers form a gloo group (workers/collective.py): the coordinator
asks the new rank 0 to `open_store`, then every member to `join` it; `pull` gives the coordinator a replica's state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import ray
import torch

from workers.collective import Group, GroupSpec, open_store
from workers.data import StoredTrain
from workers.messages import decode_sync, decode_task, encode_result, encode_sync
from workers.models import Model
from workers.node_data import DataRecipe, DataReport, Origin, read_here
from workers.replica import Replica, Schedule
from workers.state import Hyper


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
    shared: str | None = None  # a file of 4P bytes in /dev/shm for the results' arrays (same node only)
    # Start at version 0 from the seed's parameters; False (model.init_from): no state until the first sync
    from_seed: bool = True
    allreduce: bool = False  # cluster.full_rounds allreduce: full rounds are summed among the workers


@dataclass(frozen=True)
class WorkerData:
    """How a worker gets its training arrays: built from `recipe` on its node (only the examples `part` indexes,
    data.split dirichlet) when they match `digest`, else `shipped[0]`, a Ray object reference to their StoredTrain.
    The reference rides in a list so that Ray does not fetch it before the worker asks (it does for a reference
    passed as an argument itself)."""
    recipe: DataRecipe
    digest: str
    shipped: list[ray.ObjectRef]
    part: np.ndarray | None = None


def obtain(data: WorkerData) -> tuple[StoredTrain, DataReport]:
    """The worker's arrays and where they came from."""
    node = ray.get_runtime_context().get_node_id()
    here = read_here(data.recipe, data.part, data.digest)
    if isinstance(here, StoredTrain):
        return here, DataReport(Origin.NODE, node, here.nbytes)
    stored: StoredTrain = ray.get(data.shipped[0])
    return stored, DataReport(Origin.SHIPPED, node, stored.nbytes, here)


SHARED: Literal["shared"] = "shared"  # in a step's reply: the array is in the shared buffer


def open_shared(path: str | None, num_parameters: int) -> np.ndarray | None:
    """The coordinator's buffer, mapped; None when there is none or it is gone (then Ray carries the arrays)."""
    if path is None:
        return None
    try:
        return np.memmap(path, dtype="<f4", mode="r+", shape=(num_parameters,))
    except (OSError, ValueError):
        return None


def full_float32_on_cuda() -> None:
    """Full float32 products on CUDA, as on a CPU: no TensorFloat-32 in matmuls or convolutions. (A function of
    this module: Ray pickles the actor class by value, and torch.backends.cudnn does not pickle.)"""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker actor says of itself: its process, node, device, the round its replica holds (None before
    its first sync) and whether it writes results to the node's shared memory."""
    pid: int
    node: str
    device: str
    version: int | None
    shared_memory: bool


@ray.remote
class WorkerActor:
    def __init__(self, spec: WorkerSpec, data: WorkerData) -> None:
        torch.set_num_threads(max(1, spec.threads))
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"  # Ray gave it a GPU
        if device == "cuda":
            full_float32_on_cuda()
        stored, self.report = obtain(data)
        x_train, y_train = stored.arrays()
        # a shipped object stays mapped, so its node's copy stays in the object store for a worker restarted there
        self.pinned = stored if self.report.origin == Origin.SHIPPED else None
        self.replica = Replica(spec.model, x_train, y_train, spec.hyper, spec.schedule, spec.job_seed, spec.k,
                               spec.combine, spec.worker, spec.n_workers, device)
        if spec.from_seed:
            self.replica.start(spec.model.initial_parameters(spec.job_seed))
        self.replica.allreduce = spec.allreduce
        self.device = device
        self.shared = open_shared(spec.shared, spec.model.num_parameters)
        self.store: torch.distributed.TCPStore | None = None  # rank 0's, for the group being formed

    # No task events for the round calls: Ray would report each one to the GCS, per worker per round, many times
    # a stochastic round's payload (BENCHMARKS.md, section 6 measures it). `info` and `sync` keep them.
    @ray.method(enable_task_events=False)
    def step(self, header: bytes, decision: bytes) -> tuple[bytes, np.ndarray | str | None, bytes]:
        task = decode_task(header, decision)
        head, array, digest = encode_result(self.replica.handle(task), task.kind)
        if array is not None and self.shared is not None and array.shape == self.shared.shape:
            self.shared[:] = array
            return head, SHARED, digest
        return head, array, digest

    def sync(self, data: bytes) -> None:
        self.replica.sync(decode_sync(data))

    def open_store(self) -> tuple[str, int]:
        """As rank 0 of a new group: a store on a free port of this node's address; (address, port)."""
        self.replica.group = None
        host = ray.util.get_node_ip_address()
        self.store = open_store(host)
        return host, self.store.port

    def join(self, spec: GroupSpec) -> int:
        """Join the group at spec.host:spec.port (rank 0 joins the store it opened); the generation joined."""
        self.replica.group = None  # a failed join leaves no group: the round fails and the group is formed again
        store, self.store = (self.store, None) if spec.rank == 0 else (None, None)
        self.replica.group = Group(spec, ray.util.get_node_ip_address(), store)
        return spec.generation

    def pull(self, version: int) -> bytes | None:
        """The replica's state at `version` with the last reduced array (workers/replica.py Replica.pull), encoded;
        None when it is not at that version."""
        state = self.replica.pull(version)
        return None if state is None else encode_sync(state)

    def info(self) -> WorkerInfo:
        return WorkerInfo(os.getpid(), ray.get_runtime_context().get_node_id(), self.device,
                          None if self.replica.state is None else self.replica.state.version, self.shared is not None)

    def data(self) -> DataReport:
        return self.report
