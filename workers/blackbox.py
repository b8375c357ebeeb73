"""Black-box objectives: a policy scored by the return of its episodes, no data set and no gradient (no Ray).

config: objective.factory "package.module:function" (called with objective.kwargs) returns an episode runner
`run(policy: torch.nn.Module, seed: int) -> float`, the return of one episode (higher is better). The policy is
the job's model at a trial's parameters (`Policy`): it maps an observation (inputs,) or a batch (n, inputs) to the
model's output (outputs,) or (n, outputs); what the runner does with the output (argmax, tanh) is its own.

A trial of round t is scored by the mean return of objective.episodes episodes, and its cost (what the es rule
ranks, lower is better) is minus that mean, as float32. The episode seeds are a pure function of (job seed, round,
worker slot, seed index, episode), the same for the +E and the -E trial of a pair (common random numbers), so a
job is reproducible and every replica that scores a trial gets the same return. The evaluation return is the mean
and spread over objective.eval_episodes episodes whose seeds depend on the job seed alone: the same episodes at
every evaluation, so two evaluations of the same parameters agree to the bit.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.factories import FactoryError, load_factory
from workers.models import Model

FIELD = "objective.factory"
EPISODE_SEED_BITS = 31  # Gymnasium (and most simulators) take a seed in [0, 2^31)
EVAL_ROUND = -1  # the round slot of the evaluation episodes' seeds

Runner = Callable[[nn.Module, int], float]


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a replica needs to score a trial: the runner's name and kwargs, and the episodes per trial."""
    factory: str
    kwargs_json: str = "{}"  # objective.kwargs as JSON with sorted keys (hashable: the runner cache's key)
    episodes: int = 1  # per trial
    eval_episodes: int = 10
    job_seed: int = 0
    normalize: int = 0  # objective.normalize: the observation's length (its statistics travel); 0: off

    def runner(self) -> Runner:
        """This process's episode runner (built once per process by the factory)."""
        return _runner(self.factory, self.kwargs_json)


def objective_spec(factory: str, kwargs: dict[str, Any], episodes: int, eval_episodes: int,
                   job_seed: int, normalize: int = 0) -> ObjectiveSpec:
    try:
        kwargs_json = json.dumps(kwargs, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise FactoryError(f"objective.kwargs: not plain data ({err})") from None
    return ObjectiveSpec(factory, kwargs_json, episodes, eval_episodes, job_seed, normalize)


@functools.lru_cache(maxsize=4)
def _runner(factory: str, kwargs_json: str) -> Runner:
    fn = load_factory(factory, FIELD)
    try:
        run = fn(**json.loads(kwargs_json))
    except Exception as err:  # the factory's own error (a missing package, a bad kwarg), named as the job's
        raise FactoryError(f"{FIELD}: {factory}(**{kwargs_json}) failed: {type(err).__name__}: "
                           f"{str(err)[:500]}") from None
    if not callable(run):
        raise FactoryError(f"{FIELD}: {factory} returned a {type(run).__name__}, not a function "
                           "run(policy, seed) -> float")
    return run  # type: ignore[no-any-return]


CLIP = 5.0  # a normalised observation is clipped to [-5, 5] standard deviations, as OpenAI ES does
MIN_STD = 1e-2  # a feature that has barely varied yet is divided by at least this


class ObsStats:
    """objective.normalize: observations are fed to the policy as (obs - mean) / std (clipped), mean and std from
    the job's running totals (HybridState.obs: count, sum, sum of squares, float64, the same on every replica).
    Trials record what they see; a round's new observations travel up as 1 + 2d float32 (`round_stats`), their
    sum over the workers down as the same, and every replica adds it to its totals (workers/search.py apply_es)."""

    def __init__(self, totals: np.ndarray | None, dims: int, record: bool = True) -> None:
        self.dims, self.record = dims, record
        self.count = np.zeros(1)
        self.sums, self.squares = np.zeros(dims), np.zeros(dims)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        if totals is not None and totals[0] > 1:
            n = float(totals[0])
            mean = totals[1:1 + dims] / n
            std = np.sqrt(np.maximum(totals[1 + dims:] / n - mean * mean, MIN_STD ** 2))
            self.mean, self.std = torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, d) normalised by the totals (as they were when the round began); recorded when `record`."""
        if x.shape[-1] != self.dims:
            raise FactoryError(f"objective.inputs: the runner fed the policy observations of {x.shape[-1]} numbers, "
                               f"not {self.dims}")
        if self.record:
            a = x.detach().cpu().numpy().astype(np.float64)
            self.count += len(a)
            self.sums += a.sum(axis=0)
            self.squares += (a * a).sum(axis=0)
        if self.mean is None or self.std is None:
            return x
        return ((x - self.mean.to(x.device)) / self.std.to(x.device)).clamp_(-CLIP, CLIP)

    def round_stats(self) -> np.ndarray:
        """What this worker's trials saw this round: (count, sums (d), sums of squares (d)), float32."""
        return np.concatenate([self.count, self.sums, self.squares]).astype(np.float32)


class Policy(nn.Module):
    """The job's model at fixed parameters as a torch module: forward(obs) -> the model's output, no gradient.
    With `stats` (objective.normalize) the observation is normalised first."""

    def __init__(self, model: Model, theta: torch.Tensor, stats: ObsStats | None = None) -> None:
        super().__init__()
        self.model, self.theta, self.stats = model, theta, stats

    @torch.no_grad()
    def forward(self, obs: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not isinstance(obs, torch.Tensor) else obs,
                            dtype=torch.float32, device=self.theta.device)
        single = x.dim() == 1
        x = x.reshape(1, -1) if single else x
        if self.stats is not None:
            x = self.stats(x)
        out = self.model.forward(self.theta, x)
        return out[0] if single else out


def episode_seed(job_seed: int, round_index: int, worker: int, index: int, episode: int) -> int:
    """The seed of one episode: a trial's (round, worker slot, seed index, episode), or EVAL_ROUND's."""
    digest = hashlib.blake2b(struct.pack("<qqqqq", job_seed, round_index, worker, index, episode) + b"episode",
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - EPISODE_SEED_BITS)


def mean_return(run: Runner, policy: nn.Module, seeds: list[int], where: str) -> float:
    """The mean return of one episode per seed; ValueError naming the field when the runner returns no number."""
    total = 0.0
    for seed in seeds:
        got = run(policy, seed)
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise FactoryError(f"{FIELD}: the runner returned a {type(got).__name__} for {where}, "
                               "not a number (the episode's return)") from None
        total += value
    return total / len(seeds)


@torch.no_grad()
def evaluate_return(model: Model, theta: torch.Tensor, spec: ObjectiveSpec,
                    obs: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, standard deviation) of the return over the job's fixed evaluation episodes; `obs`: the running
    observation totals of objective.normalize (evaluations record nothing)."""
    stats = ObsStats(obs, spec.normalize, record=False) if spec.normalize else None
    run, policy = spec.runner(), Policy(model, theta, stats)
    returns = [mean_return(run, policy, [episode_seed(spec.job_seed, EVAL_ROUND, 0, 0, e)], "an evaluation")
               for e in range(spec.eval_episodes)]
    mean = math.fsum(returns) / len(returns)
    return mean, math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / len(returns))
