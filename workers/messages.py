"""Messages between the coordinator and the workers, and their compact wire encoding.

One round is ONE call per worker: the coordinator sends a `Task` that carries the decision of the
previous round (so a stochastic round costs one small message down, not two), the worker applies it,
does the round's work and answers with a `Result`. Sizes on the wire (little-endian, no field names):
    Task header       <IBB   round u32, kind u8, flags u8                      =  6 B
    + decision        <B[q]  kind u8 [+ seed i64]                              =  1 or 9 B
                      or kind u8 + P float32 (a full round's gradient)         =  1 + 4P B
    Result header     <IHB   round u32, worker u16, status u8                  =  7 B
    + trials          <qfH   best seed i64, its cost f32, improvements u16     = 14 B
                      (improvements: 15 bits, saturating at 32,767; the top bit: the best trial beat
                      the current parameters' cost, for the notebook and elitist rules)
    + gradient        <fI    summed loss f32, examples u32, then P float32     =  8 + 4P B
                      (the P values travel as a NumPy buffer beside the head: no copy into bytes;
                      Ray's few dozen bytes of pickle metadata for it are framing, not payload)
    + digest          8 B of blake2b over the parameter bytes (replica check, counted as sync)
So a stochastic round moves 6 + 9 = 15 B down and 7 + 14 = 21 B up per worker, whatever the model size.

Rules that use every cost (hybrid.combine es or guided, hybrid.trials shared; workers/search.py) send all of
a worker's k costs instead of the best seed (status byte's top bit set):
    + costs           <HHI   count u16, improvements u16, examples u32, then count x f32  =  8 + 4k B
and an es decision carries one float32 weight per seed of the round (seeds are derived, not sent):
    decision          kind u8 + n x f32: n = workers x k/2 (independent) or k/2 (shared)  =  1 + 4n B
so with k = 10 a worker sends 7 + 8 + 40 = 55 B up, and receives 6 + 1 + 4 * 5N B down (N workers,
independent: 27 B at N = 1, 47 B at N = 2, growing with N) or 6 + 1 + 20 = 27 B (shared, whatever N).

A black-box job with objective.normalize (workers/blackbox.py ObsStats) adds its observation statistics, d being
the observation's length: after a result's costs (status bit 0x40) <H count + (1 + 2d) x f32 = 6 + 8d B, and in an
es decision (kind byte's top bit) <H count + (1 + 2d) x f32 before the weights, the same 6 + 8d B (CartPole, d = 4:
38 B each way).

With cluster.full_rounds allreduce (workers/collective.py) a full round's gradient (and a localsgd average's
parameters) is summed among the workers themselves and never crosses the coordinator's link: the result carries
only its loss, examples and the bytes the worker's ring sent and received, and the decision only names it:
    Result (full)     <fI + <QQ  summed loss, examples, ring bytes sent, received (status bit 0x20) = 7 + 24 B
    decision          kind u8 with bit 0x40 (reduced), no array                                    =  1 B
A worker whose collective failed (a peer died or hung) answers status COLLECTIVE_FAILED; the round is redone over a
new group. The coordinator reads the state from a live replica when it needs it (`Sync.reduced`: the last reduced
array, for the decision the workers have not applied yet), counted as sync.

When the job's workers change (one left, or came back), the next task's header carries the live workers
(flag 4, then <H count and count x <H slot = 2 + 2n B, counted as sync) and they split each minibatch among
themselves from then on; a `Sync` carries them too (flag 2 of its header), for a worker that missed that task.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from workers.state import Decision, DecisionKind

_TASK = struct.Struct("<IBB")
_RESULT = struct.Struct("<IHB")
_TRIALS = struct.Struct("<qfH")
_GRAD = struct.Struct("<fI")
_SEED = struct.Struct("<q")
_COUNT = struct.Struct("<H")
_COSTS = struct.Struct("<HHI")
_STATUS_COSTS = 0x80  # in a stochastic result's status byte: every cost follows, not the best seed
_STATUS_STATS = 0x40  # after the costs: observation statistics (objective.normalize)
_STATUS_RING = 0x20  # a full or average result whose array was allreduced: the ring's bytes follow, no array
_DECISION_STATS = 0x80  # in a decision's kind byte: observation statistics precede the array
_DECISION_REDUCED = 0x40  # in a decision's kind byte: the array is the workers' allreduced one, not sent
_RING = struct.Struct("<QQ")
DIGEST_BYTES = 8
_BEATS_CURRENT = 0x8000
_IMPROVEMENTS_MAX = 0x7FFF
ARRAY_DECISIONS = (DecisionKind.GRAD, DecisionKind.PARAMS, DecisionKind.SET_GRAD, DecisionKind.ES)


class RoundKind(enum.IntEnum):
    FULL = 0  # gradients up, the combined gradient down
    STOCHASTIC = 1  # seed and cost up, the chosen seed down
    LOCAL = 2  # localsgd between averages: a local step, the loss up
    AVERAGE = 3  # localsgd every r-th round: parameters up, their average down
    APPLY = 4  # job end: apply the last decision, report a digest (accounted as sync)

    @property
    def label(self) -> str:
        """The metric and result.json kind: full or stochastic."""
        if self == RoundKind.APPLY:
            return "sync"
        return "full" if self in (RoundKind.FULL, RoundKind.AVERAGE) else "stochastic"


class Status(enum.IntEnum):
    OK = 0
    NEED_SYNC = 1  # the worker's cached version does not fit the task: send it the state
    COLLECTIVE_FAILED = 2  # allreduce: a peer died or hung; the replica kept its state, the round must be redone


FLAG_DIGEST = 1
FLAG_PARAMS = 2  # APPLY only: send the parameters up (localsgd's last gather, counted as sync)
FLAG_MEMBERS = 4  # the live workers follow the header: the shards are re-split among them
TASK_HEADER_BYTES = _TASK.size  # the rest of a header (the live workers) is accounted as sync


@dataclass(frozen=True)
class Task:
    round: int
    kind: RoundKind
    decision: Decision  # of round - 1 (kind NONE when the worker is already up to date)
    want_digest: bool = False
    want_params: bool = False
    members: tuple[int, ...] | None = None  # the live workers, sorted, when they changed (else unchanged)


@dataclass(frozen=True)
class Result:
    round: int
    worker: int
    status: Status = Status.OK
    seed: int = 0
    cost: float = 0.0
    improvements: int = 0
    beats_current: bool = False
    loss_sum: float = 0.0
    examples: int = 0
    array: np.ndarray | None = None  # float32 (P,): a gradient sum (full) or parameters (average)
    digest: bytes = b""
    costs: tuple[float, ...] = ()  # every trial's cost (es, guided, shared trials); float32 values
    stats: tuple[float, ...] = ()  # objective.normalize: the round's observation statistics, float32 values
    ring: tuple[int, int] | None = None  # allreduce: bytes this worker's ring (sent, received); the array stays


@dataclass(frozen=True)
class Sync:
    """The whole replica state, for a new, restarted or diverged worker."""
    version: int
    theta: np.ndarray
    grad: np.ndarray | None
    members: tuple[int, ...] | None = None  # the live workers (None: keep the replica's)
    history: tuple[np.ndarray, ...] = ()  # guided: the last full-round gradients, oldest first
    obs: np.ndarray | None = None  # objective.normalize: the observation totals (float64, HybridState.obs)
    # allreduce, a replica's state read by the coordinator: the array the workers allreduced in round
    # `version` (the decision they have not applied yet); None when there is none
    reduced: np.ndarray | None = None


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _f32_counted(values: np.ndarray | tuple[float, ...]) -> bytes:
    return _COUNT.pack(len(values)) + _f32(np.asarray(values))


def _read_counted(data: bytes | memoryview, at: int) -> tuple[np.ndarray, int]:
    """(float32 values, offset after them) of a <H count + count x f32 field."""
    (n,) = _COUNT.unpack_from(data, at)
    start = at + _COUNT.size
    return np.frombuffer(bytes(data[start:start + 4 * n]), dtype="<f4").astype(np.float32), start + 4 * n


def encode_decision(d: Decision) -> bytes:
    if d.reduced:
        assert d.kind in ARRAY_DECISIONS and d.kind != DecisionKind.ES and d.stats is None
        return bytes([int(d.kind) | _DECISION_REDUCED])
    if d.stats is not None:
        return bytes([int(d.kind) | _DECISION_STATS]) + _f32_counted(d.stats) + encode_decision(
            Decision(d.round, d.kind, d.seed, d.array))[1:]
    head = bytes([int(d.kind)])
    if d.kind == DecisionKind.SEED:
        return head + _SEED.pack(d.seed)
    if d.kind in ARRAY_DECISIONS:
        assert d.array is not None
        return head + _f32(d.array)
    return head


def _encode_members(members: tuple[int, ...] | None) -> bytes:
    return b"" if members is None else struct.pack(f"<H{len(members)}H", len(members), *members)


def _decode_members(data: bytes, at: int) -> tuple[tuple[int, ...], int]:
    """(members, offset after them)."""
    (n,) = _COUNT.unpack_from(data, at)
    return struct.unpack_from(f"<{n}H", data, at + _COUNT.size), at + _COUNT.size + 2 * n


def encode_task(t: Task) -> tuple[bytes, bytes]:
    """(header, decision) bytes: the two parts are accounted to the kinds of two different rounds."""
    flags = ((FLAG_DIGEST if t.want_digest else 0) | (FLAG_PARAMS if t.want_params else 0)
             | (FLAG_MEMBERS if t.members is not None else 0))
    return _TASK.pack(t.round, int(t.kind), flags) + _encode_members(t.members), encode_decision(t.decision)


def decode_task(header: bytes, decision: bytes | memoryview) -> Task:
    rnd, kind, flags = _TASK.unpack_from(header)
    members = _decode_members(header, _TASK.size)[0] if flags & FLAG_MEMBERS else None
    dkind = DecisionKind(decision[0] & ~(_DECISION_STATS | _DECISION_REDUCED))
    if decision[0] & _DECISION_REDUCED:
        return Task(rnd, RoundKind(kind), Decision(rnd - 1, dkind, reduced=True), bool(flags & FLAG_DIGEST),
                    bool(flags & FLAG_PARAMS), members)
    seed, array, stats, at = 0, None, None, 1
    if decision[0] & _DECISION_STATS:
        stats, at = _read_counted(decision, 1)
    if dkind == DecisionKind.SEED:
        (seed,) = _SEED.unpack(bytes(decision[at:at + 8]))
    elif dkind in ARRAY_DECISIONS:
        array = _owned(decision, at)
    return Task(rnd, RoundKind(kind), Decision(rnd - 1, dkind, seed, array, stats), bool(flags & FLAG_DIGEST),
                bool(flags & FLAG_PARAMS), members)


def encode_result(r: Result, kind: RoundKind) -> tuple[bytes, np.ndarray | None, bytes]:
    """(head, array, digest): the head's bytes, then the float32 values (P x 4 B, little-endian) of a gradient
    or parameters, kept as an array so that Ray ships its buffer as it is, without a copy into a bytes object;
    the payload is len(head) + array.nbytes. The digest is accounted as sync."""
    costs = r.status == Status.OK and kind == RoundKind.STOCHASTIC and bool(r.costs)
    stats = costs and bool(r.stats)
    ring = r.status == Status.OK and r.ring is not None
    out = _RESULT.pack(r.round, r.worker, int(r.status) | (_STATUS_COSTS if costs else 0)
                       | (_STATUS_STATS if stats else 0) | (_STATUS_RING if ring else 0))
    array = None
    if costs:
        out += _COSTS.pack(len(r.costs), min(r.improvements, 0xFFFF), r.examples)
        out += struct.pack(f"<{len(r.costs)}f", *r.costs)
        if stats:
            out += _f32_counted(r.stats)
    elif r.status == Status.OK:
        if kind == RoundKind.STOCHASTIC:
            field = min(r.improvements, _IMPROVEMENTS_MAX) | (_BEATS_CURRENT if r.beats_current else 0)
            out += _TRIALS.pack(r.seed, r.cost, field)
        else:
            out += _GRAD.pack(r.loss_sum, r.examples)
            if r.ring is not None:
                out += _RING.pack(*r.ring)
            elif r.array is not None:
                array = np.ascontiguousarray(r.array, dtype="<f4")
    return out, array, r.digest


def result_status(head: bytes) -> Status:
    """A result's status from its head alone, before it is decoded."""
    return Status(_RESULT.unpack_from(head)[2] & ~(_STATUS_COSTS | _STATUS_STATS | _STATUS_RING))


def payload_size(head: bytes, array: np.ndarray | None) -> int:
    return len(head) + (0 if array is None else int(array.nbytes))


def decode_result(head: bytes, array: np.ndarray | None, digest: bytes, kind: RoundKind) -> Result:
    rnd, worker, status = _RESULT.unpack_from(head)
    at = _RESULT.size
    if status & _STATUS_COSTS:
        n, improvements, examples = _COSTS.unpack_from(head, at)
        costs = struct.unpack_from(f"<{n}f", head, at + _COSTS.size)
        stats = _read_counted(head, at + _COSTS.size + 4 * n)[0] if status & _STATUS_STATS else ()
        return Result(rnd, worker, Status(status & ~(_STATUS_COSTS | _STATUS_STATS)), improvements=improvements,
                      examples=examples, digest=digest, costs=tuple(costs), stats=tuple(float(v) for v in stats))
    ring = None
    if status & _STATUS_RING:
        status &= ~_STATUS_RING
        ring = _RING.unpack_from(head, at + _GRAD.size)
    if status != Status.OK:
        return Result(rnd, worker, Status(status))
    if kind == RoundKind.STOCHASTIC:
        seed, cost, field = _TRIALS.unpack_from(head, at)
        return Result(rnd, worker, Status.OK, seed=seed, cost=cost, improvements=field & _IMPROVEMENTS_MAX,
                      beats_current=bool(field & _BEATS_CURRENT), digest=digest)
    loss_sum, examples = _GRAD.unpack_from(head, at)
    if array is not None and (array.dtype != np.dtype("<f4") or array.ndim != 1):
        raise ValueError(f"round {rnd}, worker {worker}: expected float32 values, got {array.dtype} {array.shape}")
    # read-only (Ray hands out a view of the reply's buffer): the coordinator only reads it (combine copies)
    return Result(rnd, worker, Status.OK, loss_sum=loss_sum, examples=examples, array=array, digest=digest,
                  ring=ring)


_SYNC = struct.Struct("<IB")  # version, flags (1: a gradient follows theta, 2: the live workers precede theta,
_SYNC_GRAD, _SYNC_MEMBERS, _SYNC_HISTORY = 1, 2, 4  # 4: <H count of history gradients after the members,
_SYNC_OBS = 8  # 8: <H count and count x f64 observation totals after the history count,
_SYNC_REDUCED = 16  # 16: the last allreduced array after the history)


def encode_sync(s: Sync) -> bytes:
    grad = b"" if s.grad is None else _f32(s.grad)
    flags = ((_SYNC_GRAD if grad else 0) | (_SYNC_MEMBERS if s.members is not None else 0)
             | (_SYNC_HISTORY if s.history else 0))
    flags |= (_SYNC_OBS if s.obs is not None else 0) | (_SYNC_REDUCED if s.reduced is not None else 0)
    history = _COUNT.pack(len(s.history)) if s.history else b""
    obs = b"" if s.obs is None else _COUNT.pack(len(s.obs)) + np.ascontiguousarray(s.obs, dtype="<f8").tobytes()
    return (_SYNC.pack(s.version, flags) + _encode_members(s.members) + history + obs + _f32(s.theta) + grad
            + b"".join(_f32(h) for h in s.history) + (b"" if s.reduced is None else _f32(s.reduced)))


def decode_sync(data: bytes) -> Sync:
    version, flags = _SYNC.unpack_from(data)
    members, at = _decode_members(data, _SYNC.size) if flags & _SYNC_MEMBERS else (None, _SYNC.size)
    m = 0
    if flags & _SYNC_HISTORY:
        (m,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
    obs = None
    if flags & _SYNC_OBS:
        (n,) = _COUNT.unpack_from(data, at)
        obs = np.frombuffer(data, dtype="<f8", count=n, offset=at + _COUNT.size).astype(np.float64)
        at += _COUNT.size + 8 * n
    arr = _owned(data, at)
    reduced = 1 if flags & _SYNC_REDUCED else 0
    parts = 1 + (1 if flags & _SYNC_GRAD else 0) + m + reduced
    size = len(arr) // parts
    theta = arr[:size]
    grad = arr[size:2 * size] if flags & _SYNC_GRAD else None
    first = 2 if flags & _SYNC_GRAD else 1
    history = tuple(arr[(first + j) * size:(first + j + 1) * size] for j in range(m))
    return Sync(version, theta, grad, members, history, obs, arr[(parts - 1) * size:] if reduced else None)


def _owned(buffer: bytes | memoryview, offset: int) -> np.ndarray:
    """float32 values from `buffer` at `offset`, copied: the view would be read-only and misaligned (offset 1,
    odd headers), and would keep the whole message alive; torch must get memory it may own and write."""
    return np.frombuffer(buffer, dtype="<f4", offset=offset).astype(np.float32, copy=True)
