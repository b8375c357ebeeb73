"""Wire encoding: round trips, and a stochastic round's size whatever the model's size."""
from __future__ import annotations

import numpy as np
import pytest

from workers.messages import (
    Result,
    RoundKind,
    Status,
    Sync,
    Task,
    decode_result,
    decode_sync,
    decode_task,
    encode_result,
    encode_sync,
    encode_task,
    payload_size,
)
from workers.state import Decision, DecisionKind


@pytest.mark.parametrize("params", [238_510, 2_385_010])
def test_stochastic_round_sizes_do_not_depend_on_the_model(params: int) -> None:
    task = Task(7, RoundKind.STOCHASTIC, Decision(6, DecisionKind.SEED, seed=2**62 + 5), want_digest=False)
    header, decision = encode_task(task)
    assert len(header) + len(decision) == 15  # <= 16 B down per worker
    back = decode_task(header, decision)
    assert back == task
    res = Result(7, 3, seed=2**63 - 1, cost=0.25, improvements=4)
    head, array, digest = encode_result(res, RoundKind.STOCHASTIC)
    assert payload_size(head, array) == 21 and array is None and digest == b""  # <= 32 B up per worker
    assert decode_result(head, array, digest, RoundKind.STOCHASTIC) == res
    many = Result(7, 3, seed=5, cost=0.5, improvements=10**5, beats_current=True)  # K may reach 100,000
    back = decode_result(*encode_result(many, RoundKind.STOCHASTIC), RoundKind.STOCHASTIC)
    assert back.beats_current and back.improvements == 0x7FFF  # saturates; the rule's bit survives


def test_full_round_round_trip() -> None:
    g = np.arange(10, dtype=np.float32)
    header, decision = encode_task(Task(8, RoundKind.FULL, Decision(7, DecisionKind.GRAD, array=g), True))
    assert len(decision) == 1 + 4 * 10
    t = decode_task(header, decision)
    assert t.want_digest and np.array_equal(t.decision.array, g)
    arr = t.decision.array
    assert arr is not None and arr.flags.writeable and arr.flags.aligned  # torch may own and write it
    head, array, digest = encode_result(Result(8, 1, loss_sum=3.5, examples=500, array=g, digest=b"12345678"),
                                        RoundKind.FULL)
    assert payload_size(head, array) == 7 + 8 + 40
    r = decode_result(head, array, digest, RoundKind.FULL)
    assert r.examples == 500 and r.loss_sum == 3.5 and np.array_equal(r.array, g) and r.digest == b"12345678"
    with pytest.raises(ValueError, match="float32"):
        decode_result(head, g.astype(np.float64), digest, RoundKind.FULL)


def test_need_sync_and_sync_round_trip() -> None:
    head, array, _ = encode_result(Result(3, 0, Status.NEED_SYNC), RoundKind.FULL)
    assert decode_result(head, array, b"", RoundKind.FULL).status == Status.NEED_SYNC
    theta, grad = np.ones(5, np.float32), np.full(5, 2, np.float32)
    s = decode_sync(encode_sync(Sync(9, theta, grad)))
    assert s.version == 9 and np.array_equal(s.theta, theta) and np.array_equal(s.grad, grad)
    assert decode_sync(encode_sync(Sync(0, theta, None))).grad is None
    assert s.theta.flags.writeable and s.grad is not None and s.grad.flags.writeable


def test_allreduce_round_trip_carries_no_array() -> None:
    """cluster.full_rounds allreduce: the decision names the workers' own sum (1 B), the result carries the
    ring's bytes instead of the gradient, a sync read from a replica carries the array not applied yet."""
    header, decision = encode_task(Task(8, RoundKind.FULL, Decision(7, DecisionKind.GRAD, reduced=True)))
    assert len(decision) == 1
    assert decode_task(header, decision).decision == Decision(7, DecisionKind.GRAD, reduced=True)
    res = Result(8, 2, loss_sum=3.5, examples=500, digest=b"12345678", ring=(2 * 10**9, 2 * 10**9 + 1))
    head, array, digest = encode_result(res, RoundKind.FULL)
    assert array is None and payload_size(head, array) == 7 + 8 + 16
    assert decode_result(head, array, digest, RoundKind.FULL) == res
    failed = encode_result(Result(8, 2, Status.COLLECTIVE_FAILED), RoundKind.FULL)
    assert decode_result(*failed, RoundKind.FULL).status == Status.COLLECTIVE_FAILED
    theta, grad, reduced = (np.full(5, v, np.float32) for v in (1, 2, 3))
    s = decode_sync(encode_sync(Sync(9, theta, grad, history=(grad,), reduced=reduced)))
    assert np.array_equal(s.theta, theta) and np.array_equal(s.history[0], grad)
    assert s.reduced is not None and np.array_equal(s.reduced, reduced)
    assert decode_sync(encode_sync(Sync(9, theta, None))).reduced is None
