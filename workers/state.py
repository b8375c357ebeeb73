"""The Hybrid-ES state and its shared types: hyperparameters, the replica's state, a round's decision, the search.

A leaf below workers/steps.py, workers/hybrid.py and workers/search.py: it imports none of them.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch

from workers.blackbox import ObjectiveSpec
from workers.noise import NoiseSpec


class Diverged(ValueError):
    """The training left the finite numbers: a loss, every trial's cost, a gradient or the parameters are nan
    or inf. `round` counts rounds from 1 (the round that showed it); `reason` says which number."""

    def __init__(self, round: int, reason: str) -> None:
        super().__init__(f"diverged at round {round}: {reason}")
        self.round, self.reason = round, reason


def require_finite(value: float, round: int, what: str) -> None:
    """Raise Diverged when `value` (the loss or cost named by `what`) is nan or inf."""
    if not math.isfinite(value):
        raise Diverged(round, f"{what} is {value}")


def require_finite_parameters(theta: torch.Tensor, round: int) -> None:
    finite = torch.isfinite(theta)
    if not bool(finite.all()):
        raise Diverged(round, f"{int((~finite).sum())} of {theta.numel()} parameters are nan or inf")


def cost_rank(cost: float) -> tuple[bool, float]:
    """Sort key of trial costs, lowest first: a nan or inf cost ranks after every finite one (nan compares
    with nothing, so min() would not order it)."""
    return (False, cost) if math.isfinite(cost) else (True, 0.0)


SHARED_WORKER = 0xFFFF  # the worker slot of a shared round's seeds (worker slots are u16 below it)


ANTITHETIC_RULES = ("es", "guided")


@dataclass(frozen=True)
class Search:
    """How a stochastic round's trials are drawn and what the coordinator does with their costs."""
    rule: str = "argmin"  # argmin | notebook | elitist | es | guided
    trials: str = "independent"  # independent | shared
    k: int = 10  # evaluations per worker per stochastic round
    job_seed: int = 0
    zo: bool = False  # mode zo: no gradient, the trials search around theta itself
    guided_m: int = 2
    guided_alpha: float = 0.5
    es_lr: float = 1.0  # the coordinator's (coordinator/combine.py): the replicas get the weights
    es_weights: str = "rank"

    @property
    def antithetic(self) -> bool:
        return self.rule in ANTITHETIC_RULES

    @property
    def seeds_per_worker(self) -> int:
        """Seeds one worker tries: k / 2 antithetic pairs (es, guided) or k single trials."""
        return self.k // 2 if self.antithetic else self.k

    @property
    def history_m(self) -> int:
        """Full-round gradients a replica keeps: guided_m for guided, none otherwise."""
        return self.guided_m if self.rule == "guided" else 0

    @property
    def reports_costs(self) -> bool:
        """Workers send every cost up (es, guided, shared) instead of their best seed."""
        return self.antithetic or self.trials == "shared"


@dataclass(frozen=True)
class Hyper:
    lr: float
    l2: float
    sigma: float
    batch_size: int
    num_weights: int
    noise: NoiseSpec = NoiseSpec()  # the trials' perturbation family (gaussian unless hybrid.noise says lowrank)
    # (leading weights, leading biases) that never change (model.trainable: last freezes all but the last layer):
    # every step restores them from theta and every perturbation is zero on them, so they stay bitwise as they were.
    frozen: tuple[int, int] = (0, 0)
    search: Search | None = None  # the round's trials and rule (workers/search.py); None: argmin's as before
    # a black-box objective (workers/blackbox.py): trials are scored by episode returns, not a batch's loss
    objective: ObjectiveSpec | None = None

    @property
    def shift_scale(self) -> float:
        """lr * sigma / B: how far one unit of z moves a weight."""
        return self.lr * self.sigma / self.batch_size


@dataclass(frozen=True)
class HybridState:
    """Everything a replica needs: parameters after `version` rounds and the gradient stochastic rounds shift."""
    version: int
    theta: torch.Tensor  # (P,) float32
    grad: torch.Tensor | None  # (P,) float32, batch-mean; None before the first full round
    # guided: the last hybrid.guided_m full-round gradients, oldest first (the last is `grad`); else empty
    history: tuple[torch.Tensor, ...] = ()
    # objective.normalize: the observations seen so far as float64 (count, sum (d), sum of squares (d)); else None
    obs: np.ndarray | None = None


class DecisionKind(enum.IntEnum):
    NONE = 0  # nothing to apply (version unchanged)
    GRAD = 1  # full round: descend along `array` (the combined gradient), which becomes the last gradient
    SEED = 2  # argmin: descend along grad + (sigma / B) * z(seed); grad stays the last backprop gradient
    STALE = 3  # re-apply the last gradient (mode stale; notebook when a trial beat the current cost)
    BIAS_ONLY = 4  # notebook when no trial beat the current cost: only the biases move, along the last gradient
    PARAMS = 5  # localsgd: replace the parameters by `array` (the average of the workers')
    LOCAL = 6  # localsgd, between averages: every replica stepped on its own shard (coordinator: nothing)
    SET_GRAD = 7  # Assisted H-ES (r = 1): `array` becomes the gradient the next round's trials shift; no step
    KEEP = 8  # elitist, when no trial beat the current cost: the parameters survive unchanged
    ES = 9  # es, guided, zo: `array` holds one weight per seed of the round; step from the weighted perturbations


@dataclass(frozen=True)
class Decision:
    """What a round resolved to; `round` is the round it ends (the replica's version becomes round + 1)."""
    round: int
    kind: DecisionKind
    seed: int = 0
    array: np.ndarray | None = None
    # ES with objective.normalize: the round's observation statistics (count, sums, sums of squares) over every
    # worker, float32, which every replica adds to its HybridState.obs
    stats: np.ndarray | None = None
    # cluster.full_rounds allreduce: the array (GRAD, SET_GRAD, PARAMS) is the one the workers allreduced among
    # themselves in that round; it does not travel, each replica applies its own copy
    reduced: bool = False
