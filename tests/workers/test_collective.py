"""The workers' gloo group (workers/collective.py) between real processes, without Ray: every rank gets the same
bytes of the sum, and a peer that dies ends the operation with CollectiveFailed at once, one that hangs within
the operation timeout, not gloo's half hour."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
from typing import Any

import torch

from workers.collective import CollectiveFailed, Group, GroupSpec, open_store, ring_bytes

HOST = "127.0.0.1"


def member(rank: int, size: int, port_queue: Any, out: Any, then: str) -> None:
    store = None
    if rank == 0:
        store = open_store(HOST)
        for _ in range(size - 1):
            port_queue.put(store.port)
        port = store.port
    else:
        port = port_queue.get()
    group = Group(GroupSpec(1, rank, size, HOST, port, op_timeout_s=2.0), HOST, store)
    values = torch.randn(100_003, generator=torch.Generator().manual_seed(rank))
    traffic = group.allreduce_sum(values)
    out.put((rank, hashlib.blake2b(values.numpy().tobytes()).hexdigest(), traffic))
    if then == f"die{rank}":
        out.close()
        out.join_thread()  # the queue's message is out before the process dies
        os._exit(1)
    if then == f"hang{rank}":
        time.sleep(30)
        os._exit(0)
    started = time.monotonic()
    try:
        group.allreduce_sum(values)
        out.put((rank, "ok", time.monotonic() - started))
    except CollectiveFailed as e:
        out.put((rank, f"failed: {e}", time.monotonic() - started))


def run(size: int, then: str) -> list[tuple[int, str, Any]]:
    ctx = mp.get_context("spawn")
    ports, out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=member, args=(r, size, ports, out, then)) for r in range(size)]
    for p in procs:
        p.start()
    try:
        return [out.get(timeout=120) for _ in range(2 * size - 1)]  # the dead or hung rank says nothing after
    finally:
        for p in procs:
            p.kill()
            p.join()


def test_every_rank_gets_the_same_sum_and_a_dead_or_hung_peer_fails_the_next_sum_fast() -> None:
    for size, fault in ((3, "die2"), (2, "hang1")):
        got = run(size, fault)
        first = [(h, t) for _, h, t in got if isinstance(t, tuple)]
        assert len(first) == size and len({h for h, _ in first}) == 1  # bitwise the same sum on every rank
        n = ring_bytes(4 * 100_003, size)
        assert {t for _, t in first} == {(n, n)}
        after = [(rank, what, seconds) for rank, what, seconds in got if not isinstance(seconds, tuple)]
        assert sorted(rank for rank, _, _ in after) == list(range(size - 1))
        for _, what, seconds in after:
            assert what.startswith("failed: allreduce of group 1")
            assert seconds < 20  # the operation timeout is 2 s; gloo's default would be 30 minutes


def test_ring_bytes() -> None:
    assert ring_bytes(1000, 1) == 0
    assert ring_bytes(1000, 2) == 1000  # each half sent once in the reduce-scatter and once in the allgather
    assert ring_bytes(1000, 3) == 4 * 334
