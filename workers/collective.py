"""The workers' own allreduce (cluster.full_rounds allreduce): a torch.distributed gloo group among a job's live
workers, with no Ray in it.

The group is made the way Ray Train makes one: rank 0 opens a TCPStore on a free port of its node's address, the
others join it there, and each rank's gloo device binds its own node's address (namespaces and hosts may share a
hostname, so the address is named, not looked up). The group has no default process group behind it: a new group
(after a worker died, left or came back) is a new store on a new port and a new `ProcessGroupGloo`, whatever the
old one's state; re-initialising on the old store would wait for ranks that are gone.

Gloo's ring gives every rank the same bytes of the sum, so the replicas stay bitwise equal to each other. A rank
whose peer died gets an error at once (the connection resets); a peer that hangs or lost its link ends the
operation after `op_timeout_s`, not gloo's default half hour.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

JOIN_TIMEOUT_S = 120.0  # every rank's join: the ranks are started by separate calls, so they arrive at different times


@dataclass(frozen=True)
class GroupSpec:
    """One group: its generation (a new one after every change of members), this worker's rank and the group's
    size, rank 0's store address, and how long one operation may wait for a peer."""
    generation: int
    rank: int
    size: int
    host: str
    port: int
    op_timeout_s: float


class CollectiveFailed(RuntimeError):
    """A peer of the group died, hung or lost its link during an operation; the group is spent."""


def ring_bytes(nbytes: int, size: int) -> int:
    """Bytes one rank of a ring allreduce of `nbytes` sends (and receives): a reduce-scatter and an allgather, each
    passing size - 1 of the size chunks on."""
    return 0 if size <= 1 else 2 * (size - 1) * -(-nbytes // size)


def open_store(host: str) -> dist.TCPStore:
    """Rank 0's store on a free port of `host` (its `.port`), waiting for no one: the ranks join it later."""
    return dist.TCPStore(host, 0, None, True, datetime.timedelta(seconds=JOIN_TIMEOUT_S), wait_for_workers=False,
                         use_libuv=False)


class Group:
    """This worker's membership of one gloo group. `store`: rank 0's own (open_store), None on the other ranks."""

    def __init__(self, spec: GroupSpec, own_host: str, store: dist.TCPStore | None = None) -> None:
        self.spec = spec
        timeout = datetime.timedelta(seconds=JOIN_TIMEOUT_S)
        self.store = store if store is not None else dist.TCPStore(spec.host, spec.port, None, False, timeout,
                                                                   use_libuv=False)
        options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # torch ships no stub for it
        options._timeout = timeout  # the join: every rank must arrive
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_host)]
        prefixed = dist.PrefixStore(f"hes/{spec.generation}", self.store)
        self.pg = dist.ProcessGroupGloo(prefixed, spec.rank, spec.size, options)
        self.pg.set_timeout(datetime.timedelta(seconds=spec.op_timeout_s))  # each operation from now on

    def allreduce_sum(self, values: torch.Tensor) -> tuple[int, int]:
        """Sum `values` (a CPU float32 tensor) over the group in place; (bytes sent, bytes received) by this rank.
        CollectiveFailed when a peer died or did not answer within the operation timeout."""
        try:
            self.pg.allreduce([values]).wait()  # type: ignore[attr-defined]
        except RuntimeError as e:
            raise CollectiveFailed(f"allreduce of group {self.spec.generation} (rank {self.spec.rank} of "
                                   f"{self.spec.size}): {str(e).splitlines()[0][:200]}") from None
        n = ring_bytes(values.numel() * values.element_size(), self.spec.size)
        return n, n
