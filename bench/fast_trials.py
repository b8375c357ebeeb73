"""Section `fast-trials` (issue 13): what a stochastic round costs with batched low-rank trials and lean Gaussian ones.

Run alone:  .venv/bin/python bench/run.py --mnist ../shared/data/mnist --only fast-trials
Parts, all measured in one run: seconds per in-process round (paper MLP, K=10) against the full round and a plain
PyTorch loop; ConvNet and MLP trials batched against a loop of dense trials; a 2-worker Ray job's seconds against
backprop's; dev accuracy of lowrank, gaussian and the stale control over seeds at r=2 and r=4; payload per worker
per stochastic round; peak memory of a stochastic round against a forward-only pass (a fresh process each).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from unittest import mock

import torch
import torch.nn.functional as F
from common import (
    Context,
    JobRun,
    JobSpec,
    code,
    median,
    ms,
    num,
    paper_length,
    pct,
    ratio,
    run_job,
    start_local_ray,
    table,
    verdict,
)
from peak_memory import in_fresh_process, peak_of

from coordinator.parts import build_parts
from coordinator.ray_pool import ray_pool
from coordinator.rounds import RoundEvent
from workers.hybrid import batch_cost, batch_loss_and_grad_sum, run_trials
from workers.models import ACTIVATIONS, Model, convnet, mlp
from workers.noise import trial_seed
from workers.state import HybridState, Hyper
from workers.steps import descend, noise, noise_spec, shift

LOWRANK_LIMIT = 1.5  # issue 13: a lowrank stochastic round <= 1.5x the full round of the same run
GAUSSIAN_LIMIT = 1.1  # issue 13: a gaussian stochastic round <= 1.1x the plain PyTorch loop
RAY_LIMIT = 1.5  # issue 13: the 2-worker lowrank job's seconds <= 1.5x the backprop job's
MEMORY_LIMIT = 1.5  # issue 13: gaussian stochastic round <= forward-only + 1.5 parameter vectors
STOCHASTIC_UP_MAX, STOCHASTIC_DOWN_MAX = 32, 16  # issue 3: bytes per worker per stochastic round
TIMED_EPOCHS = 2  # at r=2: 100 rounds, 50 of each kind
WARMUP_ROUNDS = 10
REPEATS = 15  # alternating repetitions of the batched and the looped trials
SEEDS = (100, 101, 102)
ACCURACY_BUDGET_S = 5400  # the accuracy jobs start seed by seed while a further seed fits in this
RAY_CPUS = 2
LOWRANK = "hybrid.noise=lowrank"


def run(ctx: Context) -> str:
    memory = _memory()
    rounds = _rounds(ctx)
    batched = _batched_vs_loop()
    payload = _payload(ctx)
    ray_runs = _ray(ctx)
    accuracy = _accuracy(ctx)
    return _render(ctx, rounds, batched, ray_runs, accuracy, payload, memory)


# --- seconds per round, in process -------------------------------------------------------------------------------

class PlainTrials:
    """K trials as a user would write them in PyTorch: torch.randn noise for every weight from a torch.Generator,
    the perturbed forward, the cross-entropy."""

    def __init__(self, model: Model, theta: torch.Tensor, hyper: Hyper, k: int) -> None:
        p = model.unflatten(theta.clone())
        self.layers = [(p[f"w{i}"], p[f"b{i}"]) for i in range(len(model.weights))]
        self.act, self.k, self.scale = ACTIVATIONS[model.activation], k, hyper.shift_scale
        self.gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def trials(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for _ in range(self.k):
            h = x
            for i, (w, b) in enumerate(self.layers):
                h = F.linear(h, w + self.scale * torch.randn(w.shape, generator=self.gen), b)
                if i < len(self.layers) - 1:
                    h = self.act(h)
            F.cross_entropy(h, y).item()


def _rounds(ctx: Context) -> dict[str, list[float]]:
    """Engine round seconds of the lowrank job and the gaussian job, and the plain loop's after each gaussian
    stochastic round on the same minibatch."""
    spec = JobSpec("paper-hes-r2", (f"train.epochs={TIMED_EPOCHS}",))
    out: dict[str, list[float]] = defaultdict(list)
    lowrank = run_job(ctx, spec.plus(LOWRANK))
    for e in lowrank.events[WARMUP_ROUNDS:]:
        out[f"lowrank {e.kind}"].append(e.seconds)
    cfg = spec.config()
    parts = build_parts(cfg)
    data, model, hyper, schedule = parts.data, parts.model, parts.hyper, parts.schedule
    plain = PlainTrials(model, torch.from_numpy(model.initial_parameters(cfg.seed)), hyper, cfg.hybrid.k)
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)

    def after_round(event: RoundEvent, _: object) -> None:
        if event.round < WARMUP_ROUNDS:
            return
        out[f"gaussian {event.kind}"].append(event.seconds)
        if event.kind == "stochastic":
            idx = torch.tensor(schedule.batch(event.round))
            x, y = x_all[idx].reshape(len(idx), -1), y_all[idx]
            started = time.perf_counter()
            plain.trials(x, y)
            out["plain"].append(time.perf_counter() - started)

    run_job(ctx, spec, on_round=after_round)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    for k in range(REPEATS):  # the two generators alone, alternating: the engine's and the plain loop's
        started = time.perf_counter()
        noise(trial_seed(cfg.seed, 1, 0, k), hyper, torch.device("cpu"))
        out["engine's noise draw"].append(time.perf_counter() - started)
        started = time.perf_counter()
        torch.randn(hyper.num_weights, generator=gen)
        out["torch.randn"].append(time.perf_counter() - started)
    return out


# --- batched trials against a loop of dense ones -------------------------------------------------------------------

def _batched_vs_loop() -> dict[str, dict[str, list[float]]]:
    """One worker's K=10 trials of a stochastic round (run_trials) on an MNIST minibatch, lowrank batched against
    the same trials one dense forward at a time, with the gaussian trials and the full round beside them."""
    out: dict[str, dict[str, list[float]]] = {}
    for label, preset in (("paper MLP 784-300-10, batch 1000", "paper-hes-r2"),
                          ("ConvNet, batch 256", "paper-convnet-assisted")):
        parts = build_parts(JobSpec(preset).config())
        data, model, hyper = parts.data, parts.model, parts.hyper
        x, y = torch.from_numpy(data.x_train[:hyper.batch_size]), torch.from_numpy(data.y_train[:hyper.batch_size])
        theta = torch.from_numpy(model.initial_parameters(100))
        loss_sum, grad_sum = batch_loss_and_grad_sum(model, theta, x, y)
        state = HybridState(1, theta, grad_sum / len(x))
        seeds = [trial_seed(100, 1, 0, k) for k in range(10)]
        lowrank = replace(hyper, noise=noise_spec(model, "lowrank", 1))
        engine = "batched" if model.batches_trials else "loop"
        work: dict[str, Callable[[], object]] = {
            "lowrank, all trials batched": lambda: _trials(model, state, seeds, x, y, lowrank, True),  # noqa: B023
            "lowrank, loop of dense trials": lambda: _trials(model, state, seeds, x, y, lowrank, False),  # noqa: B023
            f"lowrank, the engine (run_trials: {engine})": lambda: run_trials(model, state, seeds, x, y,  # noqa: B023
                                                                               lowrank),  # noqa: B023
            "gaussian, the engine (run_trials)": lambda: run_trials(model, state, seeds, x, y, hyper),  # noqa: B023
            "full round's backprop": lambda: batch_loss_and_grad_sum(model, theta, x, y),  # noqa: B023
        }
        times: dict[str, list[float]] = defaultdict(list)
        for repeat in range(REPEATS + 1):
            for name, fn in work.items():
                started = time.perf_counter()
                fn()
                if repeat:  # the first is a warm-up
                    times[name].append(time.perf_counter() - started)
        out[label] = times
    return out


def _trials(model: Model, state: HybridState, seeds: list[int], x: torch.Tensor, y: torch.Tensor, hyper: Hyper,
            batched: bool) -> object:
    """run_trials with the model's trials batched or looped, whichever the model does by itself."""
    with mock.patch.object(Model, "batches_trials", new_callable=mock.PropertyMock, return_value=batched):
        return run_trials(model, state, seeds, x, y, hyper)


@torch.no_grad()
def _dense_loop(model: Model, state: HybridState, seeds: list[int], x: torch.Tensor, y: torch.Tensor,
                hyper: Hyper) -> tuple[float, torch.Tensor | None]:
    """The K trials one at a time with dense parameters, as the engine did before this change: the step, its
    cost, then per trial the step's copy shifted by the seed's noise, its cost, the best trial's parameters kept."""
    assert state.grad is not None
    base = descend(state.theta, state.grad, hyper)
    batch_cost(model, base, x, y)
    best_cost, best = math.inf, None
    for seed in seeds:
        trial = shift(base, noise(seed, hyper, base.device), hyper)
        cost = batch_cost(model, trial, x, y)
        if best is None or cost < best_cost:
            best_cost, best = cost, trial
    return best_cost, best


# --- Ray ------------------------------------------------------------------------------------------------------------

def _ray(ctx: Context) -> dict[str, JobRun]:
    start_local_ray(RAY_CPUS)
    spec = JobSpec("paper-hes-r2", ("cluster.workers=2",))
    backprop = run_job(ctx, paper_length(ctx, spec.plus("hybrid.mode=backprop")), pool_factory=ray_pool)
    lowrank = run_job(ctx, paper_length(ctx, spec.plus(LOWRANK)), pool_factory=ray_pool)
    return {"backprop": backprop, "lowrank": lowrank}


PAYLOAD_MODELS = (
    ("paper MLP 784-300-10", JobSpec("paper-hes-r2")),
    ("MLP 784-3000-10", JobSpec("paper-hes-r2", ("model.hidden=[3000]",))),
    ("ConvNet (paper section VII), batch 256", JobSpec("paper-convnet-assisted", ("hybrid.r=2",))),
)


def _payload(ctx: Context) -> list[tuple[str, JobRun]]:
    start_local_ray(RAY_CPUS)
    return [(label, run_job(ctx, spec.plus(LOWRANK, "train.epochs=1", "cluster.workers=2"), pool_factory=ray_pool))
            for label, spec in PAYLOAD_MODELS]


# --- accuracy over seeds ----------------------------------------------------------------------------------------------

def _accuracy_specs(ctx: Context, seed: int) -> list[tuple[str, int, JobSpec]]:
    """One seed's jobs, the longest first (two run at a time)."""
    out = []
    for family, extra in (("gaussian", ()), ("lowrank", (LOWRANK,)), ("stale", ("hybrid.mode=stale",))):
        for r in (4, 2):
            out.append((family, r, paper_length(ctx, JobSpec(f"paper-hes-r{r}", (f"seed={seed}", *extra)))))
    return out


def _one_thread() -> None:
    torch.set_num_threads(1)


def _accuracy(ctx: Context) -> dict[tuple[str, int], list[JobRun]]:
    """Dev accuracy per (family, r), seed after seed while the next seed's jobs fit in ACCURACY_BUDGET_S."""
    runs: dict[tuple[str, int], list[JobRun]] = defaultdict(list)
    started = time.perf_counter()
    last = 0.0
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        for seed in SEEDS:
            elapsed = time.perf_counter() - started
            if runs and elapsed + last > ACCURACY_BUDGET_S:
                break
            specs = _accuracy_specs(ctx, seed)
            t0 = time.perf_counter()
            for (family, r, _), done in zip(specs, pool.map(run_job, [ctx] * len(specs), [s for *_, s in specs]),
                                            strict=True):
                runs[(family, r)].append(done)
            last = time.perf_counter() - t0
    return runs


# --- peak memory ------------------------------------------------------------------------------------------------------

MEMORY_CASES = {"mlp300": ("paper MLP 784-300-10", 1000), "mlp3000": ("MLP 784-3000-10", 1000),
                "convnet": ("ConvNet", 256)}
MEMORY_WORK = ("forward", "gaussian", "gaussian, dense trials", "lowrank", "lowrank, dense trials")


def _memory() -> dict[str, dict[str, float]]:
    """Peak resident bytes above the start of each piece of work, each in a fresh process (see _measure)."""
    return {case: {what: json.loads(in_fresh_process(__file__, ["memory", case, what],
                                                     f"peak memory of {case}, {what}"))["peak_bytes"]
                   for what in MEMORY_WORK} for case in MEMORY_CASES}


def _measure(case: str, what: str) -> float:
    """In this fresh process (bench/peak_memory.py): the work once as a warm-up (libraries allocate their buffers
    once), then its peak resident set above the resident set before it, on one thread."""
    torch.set_num_threads(1)
    model = {"mlp300": mlp(784, [300]), "mlp3000": mlp(784, [3000]), "convnet": convnet(28)}[case]
    n = MEMORY_CASES[case][1]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    theta = torch.from_numpy(model.initial_parameters(100))
    state = HybridState(1, theta, torch.randn(model.num_parameters, generator=gen) * 1e-3)
    hyper = Hyper(5.0, 1e-4, 1.25, n, model.num_weights)
    if what.startswith("lowrank"):
        hyper = replace(hyper, noise=noise_spec(model, "lowrank", 1))
    seeds = list(range(10))
    work: Callable[[], object] = {
        "forward": lambda: batch_cost(model, theta, x, y),
        "gaussian": lambda: run_trials(model, state, seeds, x, y, hyper),
        "lowrank": lambda: run_trials(model, state, seeds, x, y, hyper),
    }.get(what, lambda: _dense_loop(model, state, seeds, x, y, hyper))
    work()
    return peak_of(work).above_start


# --- rendering --------------------------------------------------------------------------------------------------------

def _render(ctx: Context, rounds: dict[str, list[float]], batched: dict[str, dict[str, list[float]]],
            ray_runs: dict[str, JobRun], accuracy: dict[tuple[str, int], list[JobRun]],
            payload: list[tuple[str, JobRun]], memory: dict[str, dict[str, float]]) -> str:
    return "\n".join([
        "Issue 13. `hybrid.noise: lowrank` perturbs every weight matrix by E = A B^T / sqrt(rank) (A, B N(0, 1) from "
        "the trial's seed, every entry of unit variance); a round's K trials and the unperturbed step are evaluated "
        "in one batched forward. `gaussian` (the default) evaluates one trial at a time in a buffer of its own, "
        "bitwise the dense trial's arithmetic. Rank 1 throughout. Every figure below comes from this run; timings "
        "are medians of rounds measured side by side on this shared 2-core machine (see the load average above).",
        "",
        *_render_rounds(rounds),
        "",
        *_render_batched(batched),
        "",
        *_render_ray(ray_runs),
        "",
        *_render_accuracy(ctx, accuracy),
        "",
        *_render_payload(payload),
        "",
        *_render_memory(memory),
    ])


def _render_rounds(rounds: dict[str, list[float]]) -> list[str]:
    lr_s, lr_f = median(rounds["lowrank stochastic"]), median(rounds["lowrank full"])
    g_s, plain = median(rounds["gaussian stochastic"]), median(rounds["plain"])
    rows = [
        ["lowrank stochastic round", ms(lr_s), "full round of the same job", ms(lr_f), f"{ratio(lr_s, lr_f):.2f}x",
         f"{LOWRANK_LIMIT}x: {verdict(ratio(lr_s, lr_f) <= LOWRANK_LIMIT)}", len(rounds["lowrank stochastic"])],
        ["gaussian stochastic round", ms(g_s), "plain PyTorch: K x (torch.randn of the weights, forward, "
         "cross-entropy)", ms(plain), f"{ratio(g_s, plain):.2f}x",
         f"{GAUSSIAN_LIMIT}x: {verdict(ratio(g_s, plain) <= GAUSSIAN_LIMIT)}", len(rounds["plain"])],
        ["gaussian full round", ms(median(rounds["gaussian full"])), "", "", "", "", len(rounds["gaussian full"])],
    ]
    draw, randn = median(rounds["engine's noise draw"]), median(rounds["torch.randn"])
    words = [f"- Per gaussian stochastic round the engine draws its noise 11 times (the K trials, and in process the "
             "coordinator once more for the chosen seed) and runs 11 forwards (the K trials and the unperturbed step, "
             "which improvements are counted against); the plain loop 10 and 10. One draw of the 238,200 weights' "
             f"noise: {ms(draw)} by the engine's generator (`workers/noise.py: perturbation`), {ms(randn)} by "
             f"torch.randn ({REPEATS} each, alternating)."]
    return [
        "**Seconds per round, in process** (paper MLP 784-300-10, K=10, batch 1000, one torch thread; "
        f"{code(JobSpec('paper-hes-r2', (f'train.epochs={TIMED_EPOCHS}', LOWRANK)).hes_command())} and the same "
        f"without `{LOWRANK}`, one after the other; medians over the rounds after the first {WARMUP_ROUNDS}; the "
        "plain loop runs after each gaussian stochastic round, on its minibatch). An engine round is "
        "`RoundLoop.run_round`: the worker's trials, the unperturbed step's cost, combining, and the coordinator "
        "applying the chosen seed.",
        "",
        table(["round", "median", "against", "its median", "ratio", "target", "rounds"], rows),
        "",
        *words,
    ]


def _render_batched(batched: dict[str, dict[str, list[float]]]) -> list[str]:
    rows = []
    for label, times in batched.items():
        for name, xs in times.items():
            rows.append([label, name, ms(median(xs)),
                         f"{ratio(median(xs), median(times['lowrank, loop of dense trials'])):.2f}x"])
    return [
        f"**Batched or looped trials** (`run_trials` of one worker, K=10, rank 1, on an MNIST minibatch, {REPEATS} "
        "repetitions alternating; \"all trials batched\" is `Model.forward_trials` over the K trials and the "
        "unperturbed step, \"loop of dense trials\" evaluates the same low-rank trials one dense forward at a time; "
        "the engine takes the one `Model.batches_trials` names; the full round's backprop of the same batch "
        "beside them):",
        "",
        table(["model", "work", "median", "vs the loop of dense lowrank trials"], rows),
    ]


def _render_ray(runs: dict[str, JobRun]) -> list[str]:
    b, lr = runs["backprop"], runs["lowrank"]
    rt = ratio(lr.result.seconds.total, b.result.seconds.total)
    rows = [[name, code(run.spec.hes_command()), f"{run.result.seconds.total:.1f}", f"{run.wall_seconds:.1f}",
             pct(run.final.dev_accuracy), num(run.result.bytes.total),
             f"{run.result.rounds.full} / {run.result.rounds.stochastic}",
             f"{run.result.replica_checks.checked} / {run.result.replica_checks.mismatches}"]
            for name, run in (("backprop", b), ("lowrank r=2", lr))]
    return [
        f"**A whole job on Ray** (local Ray, {RAY_CPUS} logical CPUs, 2 worker actors of 1 CPU, the coordinator in "
        "the benchmark process, one after the other):",
        "",
        table(["job", "command", "seconds (result.json)", "wall seconds", "dev", "bytes total",
               "rounds full / stochastic", "replica checks / mismatches"], rows),
        "",
        f"- lowrank r=2 against backprop: {rt:.2f}x the seconds (target {RAY_LIMIT}x: {verdict(rt <= RAY_LIMIT)}), "
        f"{pct(ratio(lr.result.bytes.total, b.result.bytes.total))} of the bytes.",
    ]


def _render_accuracy(ctx: Context, accuracy: dict[tuple[str, int], list[JobRun]]) -> list[str]:
    rows, words = [], []
    n_seeds = min(len(v) for v in accuracy.values())
    for r in (2, 4):
        devs = {f: [run.final.dev_accuracy for run in accuracy[(f, r)]] for f in ("lowrank", "gaussian", "stale")}
        med = {f: median([d for d in v if d is not None]) for f, v in devs.items()}
        for family in ("lowrank", "gaussian", "stale"):
            rows.append([f"r={r}", family, pct(med[family]), ", ".join(pct(d) for d in devs[family]),
                         code(accuracy[(family, r)][0].spec.hes_command())])
        for other in ("gaussian", "stale"):
            d = 100 * (med["lowrank"] - med[other])
            words.append(f"- r={r}: lowrank {'**loses** to' if d < 0 else 'beats' if d > 0 else 'ties'} {other} "
                         f"by {d:+.2f} points of median dev accuracy.")
    note = (f"{n_seeds} seeds ({', '.join(str(s) for s in SEEDS[:n_seeds])})" if n_seeds == len(SEEDS) else
            f"**only {n_seeds} of the {len(SEEDS)} seeds** ({', '.join(str(s) for s in SEEDS[:n_seeds])}): the next "
            f"seed's jobs did not fit in the section's budget of {ACCURACY_BUDGET_S} s")
    return [
        f"**Dev accuracy** (MNIST, in process, the paper's settings: presets `paper-hes-r2` and `paper-hes-r4`, "
        f"{ctx.epochs} epochs; {note}; two jobs at a time, each on one torch thread; medians over the seeds):",
        "",
        table(["r", "trials", "median dev", "dev per seed", "command (first seed)"], rows),
        "",
        *words,
    ]


def _render_payload(payload: list[tuple[str, JobRun]]) -> list[str]:
    rows = []
    for label, run in payload:
        b, n = run.result.bytes, 2
        s = run.result.rounds.stochastic
        up, down = ratio(b.stochastic.up, n * s), ratio(b.stochastic.down, n * s)
        rows.append([label, code(run.spec.hes_command()), num(run.result.num_parameters or 0), f"{up:.1f} / {down:.1f}",
                     verdict(up <= STOCHASTIC_UP_MAX and down <= STOCHASTIC_DOWN_MAX),
                     f"{run.result.replica_checks.checked} / {run.result.replica_checks.mismatches}"])
    return [
        "**Payload per worker per stochastic round, lowrank** (local Ray, 2 workers, 1 epoch, r=2; bytes as "
        "counted at the send sites, result.json): the same messages as Gaussian trials carry, a seed and a cost.",
        "",
        table(["model", "command", "parameters P", "B up / down per worker", f"within {STOCHASTIC_UP_MAX} / "
               f"{STOCHASTIC_DOWN_MAX}", "replica checks / mismatches"], rows),
    ]


def _render_memory(memory: dict[str, dict[str, float]]) -> list[str]:
    rows = []
    for case, (label, n) in MEMORY_CASES.items():
        p_bytes = 4 * _num_parameters(case)
        forward = memory[case]["forward"]
        for what in MEMORY_WORK:
            peak = memory[case][what]
            extra = (peak - forward) / p_bytes
            target = ""
            if what == "gaussian":
                target = f"{MEMORY_LIMIT}: {verdict(extra <= MEMORY_LIMIT)}"
            rows.append([f"{label}, batch {n}", what, f"{peak / 2**20:.1f} MiB",
                         "" if what == "forward" else f"{extra:+.2f}", target])
    return [
        "**Peak memory of one worker's stochastic round** (K=10, rank 1) against a forward-only pass of the same "
        "batch (random images of MNIST's shape): each figure is the peak resident set above the resident set "
        "before the work, in a fresh process per figure, after one warm-up run of the same work, with "
        "`MALLOC_MMAP_THRESHOLD_=65536` so that freed buffers leave the resident set (Linux VmHWM, reset through "
        "/proc/self/clear_refs). \"Dense trials\" is the engine before this change (a step, a copy and the noise per "
        "trial). Extra is (peak - forward's peak) / (4 P bytes), in parameter vectors.",
        "",
        table(["model", "work", "peak above the start", "extra over forward, parameter vectors", "target"], rows),
        "",
        "- gaussian: while a trial's forward runs, the engine holds that trial's weights (one parameter vector, "
        "the seed's noise drawn into it and turned into the weights in place; the step descend(theta, grad) is "
        "never held whole, it is recomputed in slices beside each trial) and no other trial's: the winner is "
        "rebuilt from its seed by every replica. On top of that come the noise generator's temporaries, a few "
        "slices of workers/rng.py's CPU_SLICE words, which do not grow with P.",
        "- lowrank (MLP): the K trials' and the step's activations, (K + 1) x batch x hidden, are alive at once; "
        "that is the price of the batched forward, and it grows with the batch and the hidden width, not with P.",
    ]


def _num_parameters(case: str) -> int:
    return {"mlp300": mlp(784, [300]), "mlp3000": mlp(784, [3000]), "convnet": convnet(28)}[case].num_parameters


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "memory":
    sys.stdout.write(json.dumps({"peak_bytes": _measure(sys.argv[2], sys.argv[3])}))
    sys.stdout.flush()
