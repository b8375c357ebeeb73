"""Jobs with the rules that use every cost (es, guided, shared trials, zo): in process, resumed, and on Ray."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import small_config

from coordinator.config import ConfigError, validate_config
from coordinator.job import Job
from coordinator.ray_pool import ray_pool


def digits_cfg(workers: int = 0, **hybrid: object) -> dict:
    return small_config("t", model={"hidden": [32]}, train={"epochs": 3}, hybrid={"k": 4, "combine": "es", **hybrid},
                        cluster={"workers": workers, "cpus_per_worker": 1})


@pytest.mark.parametrize("hybrid", [{}, {"noise": "lowrank"}, {"es_weights": "zscore"}, {"combine": "guided"},
                                    {"combine": "guided", "guided_alpha": 0.0, "guided_m": 3},
                                    {"combine": "argmin", "trials": "shared"}, {"trials": "shared"},
                                    {"combine": "guided", "guided_alpha": 0.0, "es_weights": "quadratic", "k": 6},
                                    {"mode": "zo", "sigma": 2.0, "es_lr": 10.0}])
def test_every_rule_runs_in_process(tmp_path: Path, hybrid: dict) -> None:
    result = Job(validate_config(digits_cfg(**hybrid)), tmp_path).run()
    assert result.status == "SUCCEEDED"
    zo = hybrid.get("mode") == "zo"  # from scratch by forward passes only: slow, but above chance (0.1)
    assert result.final.train_accuracy > (0.15 if zo else 0.3)
    assert result.replica_checks.mismatches == 0
    if hybrid.get("mode") == "zo":
        assert result.rounds.full == 0 and result.rounds.stochastic == 33  # every round stochastic


@pytest.mark.parametrize("raw,message", [
    ({"combine": "es", "k": 5}, "hybrid.k: combine 'es' tries k / 2 seeds"),
    ({"combine": "guided", "k": 3}, "so k must be even"),
    ({"mode": "zo", "combine": "argmin"}, "mode 'zo' steps by the es estimate"),
    ({"combine": "elitist", "trials": "shared"}, "hybrid.trials: 'shared' works with"),
    ({"guided_alpha": 1.5}, "hybrid.guided_alpha"),
    ({"es_lr": -1}, "hybrid.es_lr"),
    ({"trials": "some"}, "hybrid.trials"),
    ({"combine": "guided", "es_weights": "quadratic", "k": 4, "trials": "shared"}, "quadratic fits 6 numbers"),
    ({"combine": "es", "k": 70000}, "hybrid.k: every trial's cost travels"),
])
def test_bad_rule_settings_name_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_config({"hybrid": raw})


def test_guided_resume_keeps_the_gradient_history_bitwise(tmp_path: Path) -> None:
    cfg = validate_config(digits_cfg(combine="guided", guided_m=3, r=3))
    whole = Job(cfg, tmp_path / "whole")
    whole.run()
    part = Job(cfg, tmp_path / "part")

    def stop_at_17(event, progress) -> None:  # type: ignore[no-untyped-def]
        if event.round == 17:
            part.stop()

    assert part.run(on_round=stop_at_17).status == "STOPPED"
    resumed = Job(cfg, tmp_path / "part", resume=True)
    assert resumed.state.version == 18 and len(resumed.state.history) == 3
    assert resumed.run().status == "SUCCEEDED"
    assert np.array_equal(resumed.state.theta.numpy(), whole.state.theta.numpy())
    # without the history the resumed job would take other steps (the check can fail)
    forgetful = Job(cfg, tmp_path / "part2")
    forgetful.run(on_round=lambda e, p: forgetful.stop() if e.round == 17 else None)
    f2 = Job(cfg, tmp_path / "part2", resume=True)
    f2._state = f2._state.__class__(f2._state.version, f2._state.theta, f2._state.grad, ())
    f2.run()
    assert not np.array_equal(f2.state.theta.numpy(), whole.state.theta.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("hybrid", [{"combine": "guided", "guided_m": 2}, {"trials": "shared"},
                                    {"combine": "argmin", "trials": "shared"}])
def test_ray_replicas_agree_to_the_bit_and_match_in_process(ray_cluster: object, tmp_path: Path,
                                                             hybrid: dict) -> None:
    """Two Ray workers apply every es step themselves: the digests after each round equal the coordinator's."""
    torch.set_num_threads(1)  # a worker with cpus_per_worker 1 computes on one thread
    raw = digits_cfg(2, replica_check_every=1, **hybrid)
    job = Job(validate_config(raw), tmp_path / "ray", pool_factory=ray_pool)
    r = job.run()
    assert r.status == "SUCCEEDED"
    assert r.replica_checks.checked >= 2 * 30 and r.replica_checks.mismatches == 0
    s, n = r.bytes.stochastic, 2
    k, antithetic = 4, hybrid.get("combine", "es") != "argmin"
    assert s.up == n * r.rounds.stochastic * (7 + 8 + 4 * k)  # every cost up, the header as documented
    weights = (k // 2 if hybrid.get("trials") == "shared" else n * k // 2) if antithetic else 0
    per_down = 6 + (1 + 4 * weights if antithetic else 9)
    # each stochastic round's decision rides the next task; the job's last one goes with the final sync
    assert abs(s.down - n * r.rounds.stochastic * per_down) <= n * per_down
    assert math.isfinite(r.final.dev_accuracy)
