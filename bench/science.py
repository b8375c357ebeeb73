"""Section `science` (issue 15, "Beyond the paper"): where seed-only rounds win, three seeds a row.

Every row is a job a user would start (a preset plus --set overrides) run for seeds 100, 101 and 102 on a
local Ray of 2 CPUs when the row has workers (bytes on the wire are counted only there), and reported as
the median and range of its dev accuracy, its bytes per worker per stochastic round and its seconds. ROWS is
a list of comparisons: the IID one is here; the non-IID and fine-tuning ones (issue 15's data.split,
model.init_from, model.trainable keys) are appended to it when those keys exist, each a Comparison whose
`target` row must reach its `against` row by `margin`.
"""
from __future__ import annotations

from dataclasses import dataclass

from common import (
    Context,
    JobRun,
    JobSpec,
    code,
    median,
    num,
    paper_length,
    pct,
    run_job,
    signed,
    start_local_ray,
    table,
    verdict,
)

from coordinator.ray_pool import ray_pool

SEEDS = (100, 101, 102)
RAY_CPUS = 2  # one per worker, as on this 2-core machine


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    spec: JobSpec


@dataclass(frozen=True)
class Comparison:
    title: str
    rows: tuple[Row, ...]
    target: str  # the row that must win
    against: str  # the row it must beat
    margin: float  # in dev accuracy (a fraction): target - against >= margin


IID = Comparison(
    "IID, paper MLP, MNIST, 2 workers, r=4", (
        Row("seedonly", "seedonly-r4 (the best seed-only rule)", JobSpec("seedonly-r4")),
        Row("stale", "stale control (re-apply the last gradient)", JobSpec("seedonly-r4", ("hybrid.mode=stale",))),
        Row("argmin", "argmin (Algorithm 2 as written)",
            JobSpec("seedonly-r4", ("hybrid.combine=argmin", "hybrid.trials=independent", "hybrid.k=10",
                                    "hybrid.sigma=1.25"))),
        Row("backprop", "backprop every round", JobSpec("seedonly-r4", ("hybrid.mode=backprop",))),
    ), target="seedonly", against="stale", margin=0.010)

COMPARISONS: list[Comparison] = [IID]  # the non-IID and fine-tuning comparisons are appended here


def apply_seconds(family: str, n_workers: int = 2, k: int = 10, repeats: int = 5) -> float:
    """Median seconds of one es step on the paper MLP (N workers x k/2 seeds, every weight nonzero): the
    replicas' and the coordinator's extra work per stochastic round, gaussian (N*k/2 dense draws of the
    weights) against lowrank (N*k/2 rank-1 products)."""
    import time

    import numpy as np
    import torch

    from workers.hybrid import Decision, DecisionKind, HybridState, Hyper, noise_spec
    from workers.models import mlp
    from workers.search import Search

    model = mlp(784, [300], "sigmoid", "normal")
    hyper = Hyper(5.0, 1e-4, 1.25, 1000, model.num_weights, noise_spec(model, family, 1), search=Search("es", k=k))
    theta = torch.from_numpy(model.initial_parameters(1))
    state = HybridState(1, theta, torch.zeros_like(theta))
    weights = np.linspace(-0.1, 0.1, n_workers * k // 2).astype(np.float32) + np.float32(1e-3)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        from workers.hybrid import apply_decision
        apply_decision(state, Decision(1, DecisionKind.ES, array=weights), hyper)
        seconds.append(time.perf_counter() - t0)
    return median(seconds)


def _seeded(spec: JobSpec, seed: int) -> JobSpec:
    return spec.plus(f"seed={seed}")


def run(ctx: Context) -> str:
    start_local_ray(RAY_CPUS)
    runs: dict[tuple[str, str], list[JobRun]] = {}
    for comp in COMPARISONS:
        for row in comp.rows:
            runs[(comp.title, row.key)] = [
                run_job(ctx, paper_length(ctx, _seeded(row.spec, s)),
                        pool_factory=ray_pool if row.spec.config().cluster.workers else None) for s in SEEDS]
    return render(ctx, runs) + apply_note()


def apply_note() -> str:
    g, lr = apply_seconds("gaussian"), apply_seconds("lowrank")
    return (f"\nThe es step itself (every replica and the coordinator, once per stochastic round), paper MLP, "
            f"2 workers x k = 10 (10 seeds), one thread, median of 5: gaussian {1000 * g:.1f} ms (10 dense draws "
            f"of the 235,200 weights), lowrank {1000 * lr:.1f} ms (10 rank-1 products).\n")


def per_worker_stochastic_bytes(run: JobRun) -> float:
    """Bytes up and down per worker per stochastic round (0 in process: nothing crosses a boundary)."""
    r = run.result
    n, rounds = max(1, r.num_workers), r.rounds.stochastic
    return (r.bytes.stochastic.up + r.bytes.stochastic.down) / (n * rounds) if rounds else float("nan")


def render(ctx: Context, runs: dict[tuple[str, str], list[JobRun]]) -> str:
    out = [f"Seeds {', '.join(map(str, SEEDS))}; {ctx.epochs} epochs; the median and the range over the seeds.\n"]
    for comp in COMPARISONS:
        rows, devs = [], {}
        for row in comp.rows:
            rs = runs[(comp.title, row.key)]
            d = [r.final["dev_accuracy"] for r in rs]
            devs[row.key] = median(d)
            rows.append([row.label, code(row.spec.hes_command() + " --set seed=S"), pct(median(d)),
                         f"{pct(min(d))} to {pct(max(d))}", " / ".join(pct(x) for x in d),
                         num(median([per_worker_stochastic_bytes(r) for r in rs]), 1),
                         f"{median([r.result.seconds.total for r in rs]):.0f}"])
        out.append(f"### {comp.title}\n")
        out.append(table(["job", "command", "dev (median)", "dev range", "dev per seed", "B / worker / "
                          "stochastic round", "seconds (median)"], rows))
        gap = devs[comp.target] - devs[comp.against]
        out.append(f"\n- {comp.target} - {comp.against}: {signed(100 * gap, 2, ' pt')} of median dev accuracy "
                   f"(target >= {signed(100 * comp.margin, 1, ' pt')}): {verdict(gap >= comp.margin)}\n")
    return "\n".join(out)
