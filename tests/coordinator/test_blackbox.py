"""Black-box objectives (config objective): a policy trained by its episode returns in process, on the local
backend and on Ray workers, bit for bit the same; gradient modes refused naming hybrid.mode; the shipped
plain-function example reaches its target; CartPole-v1 is solved where Gymnasium is installed."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.config import ConfigError, load_config, validate_config
from coordinator.job import Job
from coordinator.ray_pool import ray_pool
from service.cli import summary_lines
from service.history import read_history
from service.report import plot_history
from workers.blackbox import CLIP, EVAL_ROUND, ObsStats, Policy, episode_seed
from workers.messages import (
    Result,
    RoundKind,
    Sync,
    Task,
    decode_result,
    decode_sync,
    decode_task,
    encode_result,
    encode_sync,
    encode_task,
)
from workers.models import mlp
from workers.state import Decision, DecisionKind

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def point_mass(backend: str = "local", workers: int = 2, epochs: int = 2, **objective: Any) -> dict[str, Any]:
    return {"name": "pm", "seed": 5,
            "objective": {"factory": "examples.control:point_mass", "kwargs": {"steps": 20}, "episodes": 2,
                          "inputs": 4, "outputs": 2, "rounds_per_epoch": 3, "eval_episodes": 4, **objective},
            "model": {"arch": "mlp", "hidden": [8], "activation": "tanh", "init": "fan_in"},
            "train": {"epochs": epochs}, "hybrid": {"mode": "zo", "combine": "es", "k": 4, "sigma": 0.1,
                                                    "replica_check_every": 2},
            "cluster": {"workers": workers, "cpus_per_worker": 1, "backend": backend}}


def weights(folder: Path) -> dict[str, bytes]:
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(str(folder / "model.safetensors")).items()}


def test_gradient_modes_and_data_are_refused_naming_the_field() -> None:
    for mode in ("hybrid", "backprop", "stale", "localsgd"):
        with pytest.raises(ConfigError, match=r"hybrid\.mode: a black-box objective"):
            validate_config({**point_mass(), "hybrid": {"mode": mode}})
    with pytest.raises(ConfigError, match=r"hybrid\.combine"):
        validate_config({**point_mass(), "hybrid": {"mode": "zo", "combine": "argmin"}})
    with pytest.raises(ConfigError, match=r"data: a black-box objective"):
        validate_config({**point_mass(), "data": {"dataset": "mnist"}})
    with pytest.raises(ConfigError, match=r"objective\.inputs, objective\.outputs"):
        validate_config({**point_mass(), "objective": {"factory": "examples.control:point_mass"}})
    with pytest.raises(ConfigError, match=r"^objective\.factory"):
        validate_config({**point_mass(), "objective": {"factory": "not a factory", "inputs": 4, "outputs": 2}})


def test_episode_seeds_and_the_policy_module() -> None:
    seeds = {episode_seed(1, t, w, i, e) for t in range(3) for w in range(2) for i in range(2) for e in range(2)}
    assert len(seeds) == 24 and all(0 <= s < 2 ** 31 for s in seeds)
    assert episode_seed(1, EVAL_ROUND, 0, 0, 0) == episode_seed(1, EVAL_ROUND, 0, 0, 0) != episode_seed(2, -1, 0, 0, 0)
    model = mlp(4, [8], "tanh", "fan_in", classes=2)
    policy = Policy(model, torch.from_numpy(model.initial_parameters(0)))
    one, batch = policy(np.ones(4)), policy(torch.ones(3, 4))
    assert one.shape == (2,) and batch.shape == (3, 2) and torch.allclose(one, batch[0])


def test_in_process_runs_are_reproducible_and_write_the_return(tmp_path: Path) -> None:
    results = [Job(validate_config(point_mass(workers=0)), tmp_path / name).run() for name in ("a", "b")]
    assert results[0].status == "SUCCEEDED" and results[0].final == results[1].final
    assert weights(tmp_path / "a") == weights(tmp_path / "b")
    final = results[0].final
    assert final.train_accuracy is None and final.dev_accuracy is None and np.isfinite(final.return_)
    assert results[0].episodes == 2 * 3 * 4 * 2  # epochs x rounds x trials x episodes
    with (tmp_path / "a" / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["episodes"] for r in rows] == ["24", "48"] and float(rows[-1]["return_mean"]) == final.return_
    figs = plot_history(read_history(tmp_path / "a"), "pm")  # hes report: the return, no loss or accuracy
    assert "return" in figs and "loss" not in figs and "accuracy" not in figs
    assert any(line.startswith("return: ") for line in summary_lines(results[0]))


def test_the_plain_function_example_trains_to_its_target(tmp_path: Path) -> None:
    cfg = load_config(str(EXAMPLES / "point_mass.yaml"), ["cluster.workers=0"])
    result = Job(cfg, tmp_path).run()
    assert cfg.objective is not None and cfg.objective.target_return is not None
    assert result.status == "SUCCEEDED" and result.final.return_ >= cfg.objective.target_return, result.final
    assert result.rounds.stochastic < cfg.train.epochs * cfg.objective.rounds_per_epoch  # it stopped at the target


@pytest.mark.slow
def test_ray_workers_are_bitwise_the_local_backend_with_seed_only_rounds(ray_cluster: object,
                                                                         tmp_path: Path) -> None:
    """With observation normalisation: its statistics travel too, and every replica ends with the same totals."""
    local_job = Job(validate_config(point_mass("local", normalize=True)), tmp_path / "local")
    local = local_job.run()
    remote_job = Job(validate_config(point_mass("ray", normalize=True)), tmp_path / "ray", pool_factory=ray_pool)
    remote = remote_job.run()
    assert local.status == remote.status == "SUCCEEDED"
    assert weights(tmp_path / "local") == weights(tmp_path / "ray") and local.final == remote.final
    assert local.bytes == remote.bytes and remote.replica_checks.mismatches == 0
    assert np.array_equal(local_job.state.obs, remote_job.state.obs)
    per_round = remote.num_workers * remote.rounds.stochastic
    # 7 + 8 + 4 costs x 4 B = 31 B up; 7 + 2 workers x 2 seeds x 4 B = 23 B down (the last one at the flush);
    # the observation statistics 2 + (1 + 2 x 4) x 4 B = 38 B each way
    assert remote.bytes.stochastic.up == (31 + 38) * per_round
    assert remote.bytes.stochastic.down <= (23 + 38) * (per_round + remote.num_workers)


def test_observation_statistics_travel_and_normalise(tmp_path: Path) -> None:
    job = Job(validate_config(point_mass(workers=0, normalize=True)), tmp_path)
    result = job.run()
    obs = job.state.obs
    assert result.status == "SUCCEEDED" and obs is not None and obs.shape == (9,)
    assert obs[0] == 2 * 3 * 4 * 2 * 20  # rounds x trials x episodes x steps, every observation counted
    assert np.all(obs[5:] >= obs[1:5] ** 2 / obs[0])  # sums of squares bound the squared sums
    stats = ObsStats(obs, 4, record=False)
    assert stats.mean is not None and stats(torch.zeros(1, 4)).abs().max() <= CLIP
    with pytest.raises(ConfigError, match=r"objective\.normalize"):
        validate_config({**point_mass(normalize=True), "model": {"arch": "module", "factory": "examples.tabular:mlp"},
                         "objective": {"factory": "examples.control:point_mass", "normalize": True}})


def test_the_wire_carries_observation_statistics() -> None:
    stats = np.arange(9, dtype=np.float32)
    result = Result(3, 1, costs=(1.0, 2.0), examples=4, stats=tuple(float(v) for v in stats))
    head, _, _ = encode_result(result, RoundKind.STOCHASTIC)
    assert len(head) == 7 + 8 + 2 * 4 + 38
    assert decode_result(head, None, b"", RoundKind.STOCHASTIC) == result
    decision = Decision(2, DecisionKind.ES, array=np.ones(4, np.float32), stats=stats)
    task = decode_task(*encode_task(Task(3, RoundKind.STOCHASTIC, decision)))
    assert np.array_equal(task.decision.stats, stats) and np.array_equal(task.decision.array, decision.array)
    sync = decode_sync(encode_sync(Sync(5, np.ones(3, np.float32), None, obs=np.array([2.0, 0.1, 1e-9]))))
    assert np.array_equal(sync.obs, [2.0, 0.1, 1e-9]) and np.array_equal(sync.theta, np.ones(3))


def test_cartpole_is_solved(tmp_path: Path) -> None:
    pytest.importorskip("gymnasium")  # the optional rl extra
    cfg = load_config(str(EXAMPLES / "cartpole.yaml"), ["cluster.workers=0"])
    result = Job(cfg, tmp_path).run()
    assert result.status == "SUCCEEDED" and result.final.return_ >= 475.0, result.final
