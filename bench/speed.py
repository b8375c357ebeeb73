"""Section `rounds`: seconds per in-process round of each kind beside the same work in a plain PyTorch loop.

The engine's rounds and the plain loop's work alternate in one run (after every engine round the plain
loop does that round's work on the same minibatch), so both see the same machine load. A cProfile of
the engine's rounds then shows where the time goes.
"""
from __future__ import annotations

import cProfile
import pstats
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from common import Context, JobSpec, code, median, ms, quartiles, ratio, run_job, table, verdict
from torch import nn

from coordinator.accounting import Counters
from coordinator.job import Progress, local_pool
from coordinator.parts import build_parts
from coordinator.rounds import RoundEvent, RoundLoop
from workers.messages import RoundKind
from workers.models import Model
from workers.noise import perturbation, trial_seed
from workers.state import HybridState, Hyper

ROUND_LIMIT = 1.3  # issue 2: an engine round <= 1.3x the plain PyTorch work, for both kinds
TIMED_EPOCHS = 2  # at r=2: 100 rounds, 50 of each kind
WARMUP_ROUNDS = 10
TOP_FUNCTIONS = 10
SPEC = JobSpec("paper-hes-r2", (f"train.epochs={TIMED_EPOCHS}",))
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


class PlainLoop:
    """The same work as a user would write it: an nn.Sequential MLP and torch.optim.SGD."""

    def __init__(self, model: Model, theta: torch.Tensor, hyper: Hyper, k: int, seed: int) -> None:
        layers: list[nn.Module] = []
        params = model.unflatten(theta)
        for i, w in enumerate(model.weights):
            out_features, in_features = w.shape
            linear = nn.Linear(in_features, out_features)
            with torch.no_grad():
                linear.weight.copy_(params[f"w{i}"])
                linear.bias.copy_(params[f"b{i}"])
            layers += [linear, ACTIVATION_MODULES[model.activation]()]
        self.net = nn.Sequential(*layers[:-1])
        weights = [m.weight for m in self.net if isinstance(m, nn.Linear)]
        biases = [m.bias for m in self.net if isinstance(m, nn.Linear)]
        # The paper's L2, W -= 2 * lr * l2 * W, is SGD weight decay 2 * l2 on the weights only.
        self.opt = torch.optim.SGD([{"params": weights, "weight_decay": 2 * hyper.l2},
                                    {"params": biases, "weight_decay": 0.0}], lr=hyper.lr)
        self.k, self.seed, self.num_weights = k, seed, model.num_weights

    @torch.no_grad()
    def trials(self, x: torch.Tensor, y: torch.Tensor, round_index: int) -> None:
        """K forward passes over the batch, each with its noise generated (the perturbation of every weight)."""
        for k in range(self.k):
            torch.from_numpy(perturbation(trial_seed(self.seed, round_index, 0, k), self.num_weights))
            F.cross_entropy(self.net(x), y).item()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward, one SGD step."""
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(x), y)
        loss.backward()
        self.opt.step()
        loss.item()


def run(ctx: Context) -> str:
    timed, plain_seconds = _interleaved(ctx)
    profiles = _profile(ctx)
    return _render(timed, plain_seconds, profiles)


def _interleaved(ctx: Context) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Engine round seconds and plain-loop seconds per kind, measured alternately in one job."""
    cfg = SPEC.config()
    parts = build_parts(cfg)
    data, model, hyper, schedule = parts.data, parts.model, parts.hyper, parts.schedule
    plain = PlainLoop(model, torch.from_numpy(model.initial_parameters(cfg.seed)), hyper, cfg.hybrid.k, cfg.seed)
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    engine: dict[str, list[float]] = defaultdict(list)
    plain_s: dict[str, list[float]] = defaultdict(list)

    def after_round(event: RoundEvent, progress: Progress) -> None:
        if event.round < WARMUP_ROUNDS:
            return
        idx = torch.tensor(schedule.batch(event.round))
        x, y = x_all[idx].reshape(len(idx), -1), y_all[idx]
        started = time.perf_counter()
        if event.kind == "stochastic":
            plain.trials(x, y, event.round)
        else:
            plain.step(x, y)
        plain_s[event.kind].append(time.perf_counter() - started)
        engine[event.kind].append(event.seconds)

    run_job(ctx, SPEC, on_round=after_round)
    return engine, plain_s


def _profile(ctx: Context) -> dict[str, tuple[pstats.Stats, int]]:
    """cProfile of the engine's round loop (RoundLoop.run_round, in-process pool), one profile per kind."""
    cfg = SPEC.config()
    parts = build_parts(cfg)
    model, hyper, schedule = parts.model, parts.hyper, parts.schedule
    state = HybridState(0, torch.from_numpy(model.initial_parameters(cfg.seed)), None)
    loop = RoundLoop(state, hyper, schedule, cfg.hybrid.mode, cfg.hybrid.combine,
                     local_pool(cfg, parts, Counters()), Counters(),
                     cfg.hybrid.replica_check_every)
    profilers = {"full": cProfile.Profile(), "stochastic": cProfile.Profile()}
    counts = {"full": 0, "stochastic": 0}
    for t in range(schedule.rounds_per_epoch):
        kind = "stochastic" if schedule.kind(t) == RoundKind.STOCHASTIC else "full"
        if t < WARMUP_ROUNDS:
            loop.run_round(t)
            continue
        profilers[kind].enable()
        loop.run_round(t)
        profilers[kind].disable()
        counts[kind] += 1
    return {k: (pstats.Stats(p), counts[k]) for k, p in profilers.items()}


def _name(key: tuple[str, int, str]) -> str:
    filename, _, func = key
    if filename == "~":
        return func
    parts = filename.split("/")
    for root in ("workers", "coordinator", "torch", "numpy"):
        if root in parts:
            return "/".join(parts[parts.index(root):]) + f":{func}"
    return f"{parts[-1]}:{func}"


def _calls_per_round(stats: pstats.Stats, rounds: int, module_suffix: str, func: str) -> float:
    raw = stats.stats  # type: ignore[attr-defined]
    calls = sum(v[1] for k, v in raw.items() if k[0].endswith(module_suffix) and k[2] == func)
    return calls / rounds if rounds else float("nan")


def _profile_table(stats: pstats.Stats, rounds: int) -> str:
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP_FUNCTIONS]
    rows = [[code(_name(key)), f"{v[1] / rounds:.1f}", ms(v[2] / rounds), f"{100 * v[2] / total:.0f}%"]
            for key, v in top]
    return table(["function (self time)", "calls per round", "per round", "share"], rows)


def _render(engine: dict[str, list[float]], plain: dict[str, list[float]],
            profiles: dict[str, tuple[pstats.Stats, int]]) -> str:
    rows, words = [], []
    what = {"stochastic": "K=10 x (noise for 238,200 weights + forward + cross-entropy)",
            "full": "forward, cross-entropy, backward, SGD step"}
    for kind in ("stochastic", "full"):
        e, p = median(engine[kind]), median(plain[kind])
        (e25, e75), (p25, p75) = quartiles(engine[kind]), quartiles(plain[kind])
        rt = ratio(e, p)
        rows.append([kind, ms(e), f"{ms(e25)} to {ms(e75)}", what[kind], ms(p), f"{ms(p25)} to {ms(p75)}",
                     f"{rt:.2f}x", f"{ROUND_LIMIT}x: {verdict(rt <= ROUND_LIMIT)}", len(engine[kind])])
        if rt > ROUND_LIMIT:
            words.append(f"- The engine's {kind} round **misses** the {ROUND_LIMIT}x target: {rt:.2f}x the plain "
                         "PyTorch work; the profile below shows where the time goes.")
    pair_engine = median(engine["stochastic"]) + median(engine["full"])
    pair_plain = median(plain["stochastic"]) + median(plain["full"])
    words.append(f"- A pair of rounds (at r=2, one of each kind): engine {ms(pair_engine)}, plain {ms(pair_plain)}, "
                 f"{ratio(pair_engine, pair_plain):.2f}x. In process the replica takes the coordinator's state "
                 "after each decision instead of rebuilding it; a Ray worker rebuilds it (section 5).")
    stats_s, n_s = profiles["stochastic"]
    noise_calls = _calls_per_round(stats_s, n_s, "workers/noise.py", "perturbation")
    forward_calls = _calls_per_round(stats_s, n_s, "workers/models.py", "forward")
    parts = [
        "Paper MLP (784-300-10, sigmoid), MNIST minibatches of 1000, one torch thread on both sides, "
        f"`{SPEC.hes_command()}` in process; medians over the rounds after the first {WARMUP_ROUNDS}, engine "
        "round and plain work alternating round by round in one run. The engine's round is "
        "`RoundLoop.run_round` (scheduling, the replica's work, combining, applying the decision on the "
        "coordinator's state).",
        "",
        table(["round", "engine median", "engine IQR", "plain PyTorch work", "plain median", "plain IQR",
               "ratio", "target", "rounds"], rows),
        "",
        *words,
        f"- Per stochastic round the engine generates a perturbation {noise_calls:.0f} times (the K trials and "
        f"the coordinator's update from the chosen seed) and runs the model's forward {forward_calls:.0f} times "
        "(the K trials and the unperturbed step, which improvements are counted against); the plain loop does "
        "each 10 times.",
        "",
        f"Where an engine round's time goes (cProfile of `RoundLoop.run_round`, {n_s} stochastic and "
        f"{profiles['full'][1]} full rounds of one epoch after {WARMUP_ROUNDS} warm-up rounds; the profiler "
        "adds its own overhead to every Python call). Stochastic rounds:",
        "",
        _profile_table(stats_s, n_s),
        "",
        "Full rounds:",
        "",
        _profile_table(*profiles["full"]),
    ]
    return "\n".join(parts)
