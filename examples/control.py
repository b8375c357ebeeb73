"""Episode runners for black-box jobs (config `objective.factory`): Gymnasium tasks, and a point mass in plain NumPy.

    hes train --config examples/cartpole.yaml      # Gymnasium CartPole-v1 (pip install 'hybrid-es[rl]')
    hes train --config examples/acrobot.yaml       # Gymnasium Acrobot-v1, a harder swing-up
    hes train --config examples/point_mass.yaml    # no environment library: the simulation is below

Each factory returns `run(policy, seed) -> float`: one episode from the seed's start, its summed reward. The policy
maps an observation to one score per action (`argmax`, a discrete action) or to forces (`tanh`, scaled to the
action's bounds).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

Runner = Callable[[nn.Module, int], float]


def gym(env: str = "CartPole-v1", action: str = "argmax") -> Runner:
    """A Gymnasium task: `action` argmax (discrete actions: the highest score) or tanh (a Box: tanh of the output
    scaled to the action space's bounds). The environment is made once per process and reset per episode."""
    import gymnasium  # the optional `rl` extra: only the jobs that name this factory need it

    if action not in ("argmax", "tanh"):
        raise ValueError(f"action: 'argmax' or 'tanh', not {action!r}")
    environment = gymnasium.make(env)
    high = np.asarray(getattr(environment.action_space, "high", 1.0), dtype=np.float32)

    def run(policy: nn.Module, seed: int) -> float:
        obs, _ = environment.reset(seed=seed)
        total = 0.0
        while True:
            out = policy(obs)
            act: Any = int(out.argmax()) if action == "argmax" else torch.tanh(out).numpy() * high
            obs, reward, terminated, truncated, _ = environment.step(act)
            total += float(reward)
            if terminated or truncated:
                return total

    return run


def point_mass(steps: int = 50, dt: float = 0.1) -> Runner:
    """A point mass on a plane must come to rest at the origin: it starts at rest at a seeded position in
    [-1, 1]^2, the policy reads (position, velocity) (4 numbers) and pushes with tanh(output) (2 numbers, unit
    force at most); the reward of a step is minus the squared distance to the origin minus 0.1 times the squared
    speed, so an episode's return is 0 at best. Plain NumPy, no environment library."""

    def run(policy: nn.Module, seed: int) -> float:
        rng = np.random.default_rng(seed)
        pos = rng.uniform(-1.0, 1.0, 2)
        vel = np.zeros(2)
        total = 0.0
        for _ in range(steps):
            force = np.tanh(policy(np.concatenate([pos, vel])).numpy().astype(np.float64))
            vel = vel + dt * force
            pos = pos + dt * vel
            total -= float(pos @ pos + 0.1 * vel @ vel)
        return total

    return run
