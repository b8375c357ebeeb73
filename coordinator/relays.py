"""Node relays (cluster.relays): one RelayActor per node that fans a round out to its node's worker actors and
returns their replies together, so the coordinator makes one Ray call per node per round, not one per worker.

A relay holds no job state: each call carries the round's header, the decision (a large one as ONE object
reference, inside a list so that the relay passes the reference on instead of fetching it) and the node's live
worker slots, with the actor handles the relay has not seen yet (a replaced actor gets a new handle). A worker
whose call failed comes back as a typed `Failed` marker, which the pool turns into the same recovery as a failed
direct call. A relay that dies (killed, or its node lost) fails none of its workers by itself: the pool treats its
workers' calls as failed (each is then probed and recovered, or leaves the job, as today) and makes a new relay
for that node at the next round. Relays take no CPU of their own (num_cpus=0) and are placed on their node with a
soft node affinity, so that a relay for a node that has just gone is placed elsewhere instead of never.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# What a lost actor or node raises (a dead actor, or a reply lost with its node); any other error, such as a
# worker's own exception, fails the round as a direct call's would
LOST = (RayActorError, ObjectLostError)
RELAY_MARGIN_S = 30.0  # a relay answers within the workers' call timeout plus this, or it is taken for lost
AUTO_MIN_PER_NODE = 4  # cluster.relays auto: relays once a node holds this many of the job's workers


def use_relays(setting: bool | str, nodes: Sequence[str | None]) -> bool:
    """cluster.relays for workers placed on `nodes` (each worker's). auto turns them on where the calls they save
    outweigh the hop they add (BENCHMARKS.md, "Fan-out"): the workers span several nodes, whose relays then
    fan out side by side, and some node holds AUTO_MIN_PER_NODE of them. On one node a relay only moves the
    calls to another process on the same cores."""
    if setting == "auto":
        per_node: dict[str | None, int] = {}
        for node in nodes:
            per_node[node] = per_node.get(node, 0) + 1
        return len(per_node) > 1 and max(per_node.values()) >= AUTO_MIN_PER_NODE
    return bool(setting)


@dataclass(frozen=True)
class Failed:
    """A worker's call that the relay could not complete: `hung` when it did not answer within the call timeout
    (the pool kills it, as a hung direct call), else its actor died or its relay did (the pool probes it)."""
    hung: bool
    reason: str


Reply = tuple[bytes, Any, bytes]  # a WorkerActor.step reply, as the relay got it


@dataclass(frozen=True)
class RelayInfo:
    """What a relay says of itself: its process and node."""
    pid: int
    node: str


@ray.remote(num_cpus=0, max_restarts=0)
class RelayActor:
    def __init__(self) -> None:
        self.handles: dict[int, ray.actor.ActorHandle] = {}

    def info(self) -> RelayInfo:
        return RelayInfo(os.getpid(), ray.get_runtime_context().get_node_id())

    # No task events for the round calls, as WorkerActor.step (one GCS report per call otherwise).
    @ray.method(enable_task_events=False)
    def step(self, header: bytes, decision: list[Any], slots: list[int],
             handles: dict[int, ray.actor.ActorHandle], timeout_s: float) -> list[Reply | Failed]:
        """Round `header` with `decision[0]` (bytes, or an object reference each worker fetches itself) on the
        workers `slots`, in that order; `handles`: the slots whose actor handle is new to this relay."""
        self.handles.update(handles)
        refs = [self.handles[i].step.remote(header, decision[0]) for i in slots]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        done = set(ready)
        try:
            values: list[Reply | Failed] = ray.get(refs) if len(done) == len(refs) else []
        except RayError:
            values = []
        if values:
            return values
        out: list[Reply | Failed] = []
        for ref in refs:  # some failed or hung: each on its own, so the others' replies still count
            if ref not in done:
                out.append(Failed(True, f"no answer within {timeout_s:g} s"))
                continue
            try:
                out.append(ray.get(ref))
            except LOST as e:
                out.append(Failed(False, type(e).__name__))
        return out


@dataclass
class _Relay:
    actor: ray.actor.ActorHandle
    known: dict[int, ray.actor.ActorHandle] = field(default_factory=dict)  # the handles it holds


@dataclass
class RelayCalls:
    """What `Relays.send` started: per relay call, the node it went to and the slots it carries."""
    calls: list[tuple[str, list[int], ray.ObjectRef]]

    @property
    def slots(self) -> list[int]:
        return sorted(i for _, slots, _ in self.calls for i in slots)


class Relays:
    """The relays of one job's workers: grouped by the node of each worker's placement-group bundle (read again
    when the live workers change or a call failed, since a lost node's bundles move)."""

    def __init__(self, nodes: Callable[[], list[str | None]], actors: list[ray.actor.ActorHandle],
                 runtime_env: dict, call_timeout_s: float) -> None:
        """`nodes`: each worker slot's node now (RayWorkers.nodes); `actors`: the pool's list, kept current."""
        self.nodes, self.actors, self.runtime_env = nodes, actors, runtime_env
        self.call_timeout_s = call_timeout_s
        self.relays: dict[str, _Relay] = {}
        self.groups: dict[str, list[int]] = {}
        self._live: tuple[int, ...] | None = None

    def start(self, live: list[int]) -> None:
        """Make the relays of the nodes the `live` workers are on and wait until each answers."""
        self._group(live)
        ray.get([self._relay(node).actor.info.remote() for node in self.groups])

    def _group(self, live: list[int]) -> None:
        nodes = self.nodes()
        here = ray.get_runtime_context().get_node_id()
        groups: dict[str, list[int]] = {}
        for i in live:  # a bundle between nodes has none: any relay reaches its actor
            groups.setdefault(nodes[i] or here, []).append(i)
        self.groups, self._live = groups, tuple(live)
        for node in [n for n in self.relays if n not in groups]:  # its workers moved or left
            ray.kill(self.relays.pop(node).actor, no_restart=True)

    def _relay(self, node: str) -> _Relay:
        if node not in self.relays:
            strategy = NodeAffinitySchedulingStrategy(node, soft=True)
            actor = RelayActor.options(  # type: ignore[attr-defined]
                scheduling_strategy=strategy, runtime_env=self.runtime_env).remote()
            self.relays[node] = _Relay(actor)
        return self.relays[node]

    def send(self, live: list[int], header: bytes, decision: bytes | ray.ObjectRef) -> RelayCalls:
        """One call per node: the round to that node's live workers."""
        if tuple(live) != self._live:
            self._group(live)
        calls = []
        for node, slots in self.groups.items():
            relay = self._relay(node)
            new = {i: self.actors[i] for i in slots if relay.known.get(i) is not self.actors[i]}
            relay.known.update(new)
            ref = relay.actor.step.remote(header, [decision], slots, new, self.call_timeout_s)
            calls.append((node, slots, ref))
        return RelayCalls(calls)

    def gather(self, sent: RelayCalls) -> dict[int, Reply | Failed]:
        """Every slot's reply or failure: one ray.wait and one ray.get for all the relays' answers. A relay that
        died or did not answer is dropped (made again at its node's next call) and its slots marked failed."""
        refs = [ref for _, _, ref in sent.calls]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.call_timeout_s + RELAY_MARGIN_S)
        done = set(ready)
        try:
            answers = ray.get(refs) if len(done) == len(refs) else None
        except RayError:
            answers = None
        out: dict[int, Reply | Failed] = {}
        for k, (node, slots, ref) in enumerate(sent.calls):
            replies = answers[k] if answers is not None else self._answer(node, ref, ref in done)
            if replies is None:
                replies = [Failed(False, f"relay on node {node[:8]} lost")] * len(slots)
            out.update(zip(slots, replies, strict=True))
            if any(isinstance(r, Failed) for r in replies):
                self._live = None  # a worker may have moved: read the bundles' nodes again
        return out

    def _answer(self, node: str, ref: ray.ObjectRef, ready: bool) -> list[Reply | Failed] | None:
        """One relay's answer; None (and the relay dropped) when it died or hung."""
        try:
            if ready:
                return ray.get(ref)
        except LOST:  # the relay died, or its node
            pass
        relay = self.relays.pop(node, None)
        if relay is not None:
            ray.kill(relay.actor, no_restart=True)
        return None

    def close(self) -> None:
        for relay in self.relays.values():
            ray.kill(relay.actor, no_restart=True)
        self.relays = {}
