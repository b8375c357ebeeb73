"""Without a Ray cluster: the live workers on the wire, the shards they split a batch into, the note a shrunk job
leaves, and the pool's settings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.accounting import Counters
from coordinator.config import validate_config
from coordinator.parts import build_parts
from workers.hybrid import batch_loss_and_grad_sum
from workers.messages import (
    TASK_HEADER_BYTES,
    RoundKind,
    Sync,
    Task,
    decode_sync,
    decode_task,
    encode_sync,
    encode_task,
)
from workers.replica import Replica
from workers.state import Decision, DecisionKind


def test_the_live_workers_travel_in_a_task_only_when_they_changed() -> None:
    plain = Task(7, RoundKind.STOCHASTIC, Decision(6, DecisionKind.SEED, seed=42))
    header, decision = encode_task(plain)
    assert len(header) == TASK_HEADER_BYTES == 6 and decode_task(header, decision) == plain
    changed = Task(7, RoundKind.FULL, Decision(6, DecisionKind.NONE), want_digest=True, members=(0, 2, 5))
    header, decision = encode_task(changed)
    assert len(header) == 6 + 2 + 2 * 3 and decode_task(header, decision) == changed


def test_a_sync_carries_the_live_workers() -> None:
    theta, grad = np.arange(5, dtype=np.float32), np.ones(5, dtype=np.float32)
    for s in (Sync(3, theta, grad, (1,)), Sync(3, theta, None, (0, 1)), Sync(3, theta, grad)):
        back = decode_sync(encode_sync(s))
        assert (back.version, back.members) == (s.version, s.members)
        assert np.array_equal(back.theta, theta)
        assert (back.grad is None) == (s.grad is None) and (s.grad is None or np.array_equal(back.grad, grad))


def test_the_live_workers_shards_cover_the_batch_once_and_sum_to_its_gradient() -> None:
    """Three configured workers, slot 1 gone: slots 0 and 2 split each batch in two, and their summed gradients
    make the whole batch's."""
    torch.set_num_threads(1)
    cfg = validate_config({"name": "shards", "seed": 3, "data": {"dataset": "digits"},
                           "model": {"arch": "mlp", "hidden": [8], "activation": "sigmoid"},
                           "train": {"epochs": 1, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
                           "cluster": {"workers": 3}})
    parts = build_parts(cfg)
    data, model, hyper, schedule = parts.data, parts.model, parts.hyper, parts.schedule
    theta = model.initial_parameters(cfg.seed)
    t, replicas = 4, []
    for slot in (0, 2):
        rep = Replica(model, data.x_train, data.y_train, hyper, schedule, cfg.seed, 2, "argmin", slot, 3)
        rep.sync(Sync(t, theta, None))  # no live workers in it: the replica keeps its own
        replicas.append(rep)
    results = [rep.handle(Task(t, RoundKind.FULL, Decision(t - 1, DecisionKind.NONE), members=(0, 2)))
               for rep in replicas]
    shards = [rep.shard(t) for rep in replicas]
    assert sorted(np.concatenate(shards).tolist()) == sorted(schedule.batch(t).tolist())
    assert sum(r.examples for r in results) == 100
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    idx = torch.as_tensor(schedule.batch(t))
    _, whole = batch_loss_and_grad_sum(model, torch.from_numpy(theta), x[idx], y[idx])
    total = sum(r.array for r in results if r.array is not None)
    assert np.allclose(total, whole.numpy(), rtol=1e-5, atol=1e-6)
    # a sync tells a replica the live workers as well
    replicas[1].sync(Sync(t, theta, None, (2,)))
    assert np.array_equal(replicas[1].shard(t), schedule.batch(t))


def test_the_note_of_a_job_that_ran_short_of_workers() -> None:
    c = Counters()
    assert c.workers_note == ""
    c.workers_changed(5, 1, 2)
    assert c.workers_note == "ran on 1 of 2 workers from round 5"
    c.workers_changed(12, 2, 2)
    assert c.workers_note == "ran on 1 of 2 workers in rounds 5 to 11"
    c.workers_changed(20, 1, 2)
    assert c.workers_note == "ran on 1 of 2 workers in rounds 5 to 11; ran on 1 of 2 workers from round 20"
    assert Counters.from_dict(c.to_dict()).workers_note == c.workers_note  # kept in the checkpoint


def test_pool_settings_are_read_once_from_the_environment() -> None:
    from coordinator.ray_pool import PoolSettings

    assert PoolSettings.from_env({}) == PoolSettings(600.0, True)
    assert PoolSettings.from_env({"HES_WORKER_TIMEOUT_S": "5", "HES_SHM_DISABLE": "1"}) == PoolSettings(5.0, False)
    for bad in ("soon", "0", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match="HES_WORKER_TIMEOUT_S: .* is not a number of seconds above 0"):
            PoolSettings.from_env({"HES_WORKER_TIMEOUT_S": bad})
