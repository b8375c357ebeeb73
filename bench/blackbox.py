"""`make bench` section blackbox (issue 23): black-box objectives, a policy trained by its episode returns alone.

Run:  .venv/bin/python bench/run.py --mnist $HES_MNIST_DIR --only blackbox     (about 15 minutes on 2 cores)

- CartPole-v1 (examples/cartpole.yaml) on 1, 2 and 4 Ray workers at one population (16 trials a round: k = 16 / N
  per worker), two seeds each: rounds, trial episodes and seconds until the mean evaluation return (10 fixed
  episodes, every 5 rounds) reaches 475; episodes per second; payload bytes per worker per round.
- Acrobot-v1 (examples/acrobot.yaml) on 2 Ray workers to a return of -100.
- The same tasks by a plain single-process OpenAI-ES loop written here (NumPy and torch: antithetic pairs, centered
  ranks over the 2n returns, step es_lr * sigma * sum_i (u+_i - u-_i) eps_i / n, the same population, sigma, step,
  policy and episodes per trial, every parameter perturbed), and by EvoTorch's PGPE where `evotorch` imports.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import Context, median, start_local_ray
from torch import nn

from coordinator.config import load_config
from coordinator.job import Job
from coordinator.ray_pool import ray_pool
from examples.control import gym

ROOT = Path(__file__).resolve().parents[1]
POPULATION = 16  # trials a round (8 antithetic pairs), whatever the number of workers
SEEDS = (100, 101)
# task: (example, target return, observation length, actions, most rounds a run may take, seeds)
TASKS = {"CartPole-v1": ("cartpole.yaml", 475.0, 4, 2, 300, SEEDS),
         "Acrobot-v1": ("acrobot.yaml", -100.0, 6, 3, 100, SEEDS[:1])}


def hes_run(ctx: Context, task: str, workers: int, seed: int) -> dict[str, float]:
    """One job of the task's example on `workers` Ray workers, stopped at its target return."""
    config, target, _, _, most, _ = TASKS[task]
    overrides = [f"cluster.workers={workers}", f"seed={seed}", f"hybrid.k={POPULATION // workers}",
                 f"train.epochs={most // 5}"]  # the examples evaluate every 5 rounds
    cfg = load_config(str(ROOT / "examples" / config), overrides)
    result = Job(cfg, ctx.work / f"bb-{task}-{workers}-{seed}", pool_factory=ray_pool).run()
    rounds, n = result.rounds.stochastic, result.num_workers
    sb = result.bytes.stochastic
    return {"solved": float(result.final["return"] or -math.inf) >= target, "return": result.final["return"] or 0.0,
            "rounds": rounds, "episodes": result.episodes or 0, "seconds": result.seconds.total,
            "eps_rate": (result.episodes or 0) / max(1e-9, result.seconds.stochastic_rounds),
            "up": sb.up / (n * rounds), "down": sb.down / (n * rounds)}


class FromNumpy(nn.Module):
    """A torch policy fed the environment's NumPy observations, as the hes Policy is (workers/blackbox.py)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @torch.no_grad()
    def forward(self, obs: np.ndarray) -> torch.Tensor:
        return self.net(torch.as_tensor(obs, dtype=torch.float32))


def policy_net(inputs: int, outputs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, outputs))


def evaluate(run: Callable[[nn.Module, int], float], net: nn.Module, episodes: int = 10) -> float:
    return float(np.mean([run(FromNumpy(net), 10_000 + e) for e in range(episodes)]))


def openai_es(task: str, seed: int, sigma: float = 0.1, es_lr: float = 2.0) -> dict[str, float]:
    """The plain loop: one process, one episode per trial, evaluation every 5 rounds as the hes jobs do."""
    _, target, inputs, outputs, max_rounds, _ = TASKS[task]
    run = gym(task, "argmax")
    net = policy_net(inputs, outputs, seed)
    theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach().numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    n = POPULATION // 2
    episodes, t0, ret = 0, time.perf_counter(), -math.inf

    def score(vec: np.ndarray, episode_seed: int) -> float:
        torch.nn.utils.vector_to_parameters(torch.from_numpy(vec.astype(np.float32)), net.parameters())
        return run(FromNumpy(net), episode_seed)

    for rnd in range(max_rounds):
        eps = rng.standard_normal((n, len(theta)))
        returns = np.empty(2 * n)
        for i in range(n):
            s = int(rng.integers(2 ** 31))
            returns[2 * i] = score(theta + sigma * eps[i], s)
            returns[2 * i + 1] = score(theta - sigma * eps[i], s)
        episodes += 2 * n
        ranks = np.empty(2 * n)
        ranks[np.argsort(returns, kind="stable")] = np.arange(2 * n)
        u = ranks / (2 * n - 1) - 0.5
        theta = theta + es_lr * sigma * (u[0::2] - u[1::2]) @ eps / n
        if (rnd + 1) % 5 == 0:
            torch.nn.utils.vector_to_parameters(torch.from_numpy(theta.astype(np.float32)), net.parameters())
            ret = evaluate(run, net)
            if ret >= target:
                return {"solved": True, "rounds": rnd + 1, "episodes": episodes, "seconds": time.perf_counter() - t0,
                        "return": ret}
    return {"solved": False, "rounds": max_rounds, "episodes": episodes, "seconds": time.perf_counter() - t0,
            "return": ret}


def evotorch_pgpe(task: str, seed: int) -> dict[str, float] | str:
    """EvoTorch's PGPE (ClipUp) on the same task, policy and population, in this process; a reason if it cannot."""
    try:
        from evotorch.algorithms import PGPE
        from evotorch.neuroevolution import GymNE
    except ImportError as err:
        return f"not run: evotorch does not import ({err}); `pip install evotorch`"
    _, target, _, _, max_rounds, _ = TASKS[task]
    torch.manual_seed(seed)
    problem = GymNE(env=task, network="Linear(obs_length, 16) >> Tanh() >> Linear(16, act_length)",
                    num_episodes=1)
    searcher = PGPE(problem, popsize=POPULATION, center_learning_rate=0.075, stdev_learning_rate=0.1,
                    stdev_init=0.1, optimizer="clipup", optimizer_config={"max_speed": 0.15}, symmetric=True)
    run = gym(task, "argmax")
    t0, ret = time.perf_counter(), -math.inf
    for rnd in range(max_rounds):
        searcher.step()
        if (rnd + 1) % 5 == 0:
            net = problem.parameterize_net(searcher.status["center"])
            ret = evaluate(run, net)
            if ret >= target:
                return {"solved": True, "rounds": rnd + 1, "episodes": (rnd + 1) * POPULATION,
                        "seconds": time.perf_counter() - t0, "return": ret}
    return {"solved": False, "rounds": max_rounds, "episodes": max_rounds * POPULATION,
            "seconds": time.perf_counter() - t0, "return": ret}


def _row(name: str, runs: list[dict[str, float]]) -> str:
    solved = sum(bool(r["solved"]) for r in runs)
    cells = [f"{solved}/{len(runs)}", f"{median([r['rounds'] for r in runs]):.0f}",
             f"{median([r['episodes'] for r in runs]):,.0f}", f"{median([r['seconds'] for r in runs]):.1f}",
             f"{median([r['episodes'] / r['seconds'] for r in runs]):.1f}"]
    extra = (f"{median([r['eps_rate'] for r in runs]):.1f} | {median([r['up'] for r in runs]):.1f} / "
             f"{median([r['down'] for r in runs]):.1f}") if "up" in runs[0] else "n/a | n/a"
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def run(ctx: Context) -> str:
    torch.set_num_threads(1)
    start_local_ray(4)
    lines = ["Trials are scored by episode returns alone (`objective.factory`, `hybrid.mode: zo`, `combine: es`); "
             f"a population of {POPULATION} trials a round (k = {POPULATION} / N per worker), one episode a trial, "
             "MLP 16 tanh policies, sigma 0.1, es_lr 2; evaluation every 5 rounds on 10 fixed episodes, the job "
             f"ending at its target; medians over the seeds. The machine is shared with "
             "other engineers' jobs and test suites (load average above) and has 2 cores, so 4 workers oversubscribe "
             "it and the seconds are noisy; compare rows of one run only.", ""]
    header = ("| run | solved | rounds | trial episodes | seconds | episodes/s | episodes/s (rounds only) | "
              "B up / down per worker per round |\n|---|---|---|---|---|---|---|---|")
    for task, workers_list in (("CartPole-v1", (1, 2, 4)), ("Acrobot-v1", (2,))):
        _, target, _, _, rounds, seeds = TASKS[task]
        lines += [f"### {task}, to a mean evaluation return >= {target:g} (at most {rounds} rounds; seeds "
                  f"{', '.join(map(str, seeds))})", "", header]
        for n in workers_list:
            lines.append(_row(f"hes, {n} Ray worker{'s' * (n > 1)}", [hes_run(ctx, task, n, s) for s in seeds]))
        lines.append(_row("plain OpenAI-ES loop, 1 process", [openai_es(task, s) for s in seeds]))
        evo = [evotorch_pgpe(task, s) for s in seeds]
        if all(isinstance(e, dict) for e in evo):
            lines.append(_row("EvoTorch PGPE (ClipUp), 1 process", [e for e in evo if isinstance(e, dict)]))
        else:
            lines.append(f"| EvoTorch PGPE | {next(e for e in evo if isinstance(e, str))} |||||||")
        lines.append("")
    lines += ["Bytes: a worker sends 7 + 8 + 4k B up (its k costs) and receives 7 + 4 x 8 = 39 B down (one float32 "
              "weight per seed of the round, 8 seeds) whatever N; the episode seeds, noise and policy never travel. "
              "At N = 1 (k = 16) that is 79 B up, above the 64 B of the 2-worker acceptance; k = 8 per worker "
              "(N = 2, the shipped cartpole.yaml) gives 47 B. 'seconds' is the job's own time (result.json "
              "seconds.total: rounds and evaluations, not the Ray workers' start), 'episodes/s' the trial episodes "
              "over it, '(rounds only)' over the rounds' time alone."]
    return "\n".join(lines) + "\n"
