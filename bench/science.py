"""Section `science` (issue 15, "Beyond the paper"): where seed-only rounds win, three seeds a row.

Every row is a job a user would start (a preset plus --set overrides), run for seeds 100, 101 and 102 with
`cluster.backend=local`: the Ray job's N replicas one after another in one process, which ends with the Ray
job's parameters and result.json bytes to the bit (tests/coordinator/test_local_backend.py: argmin, localsgd,
dirichlet, es and guided over shared trials, zo), so two jobs run side by side, one per core. Each row reports
the median and range of its dev accuracy, its bytes per worker per stochastic round and over the whole job,
worker 0's peak memory (a fresh process, bench/worker_memory.py), its seconds (with the diagnostics' extra
backprop in the rows that run it), and what hybrid.diagnostics says about its stochastic steps.
Each Comparison's `target` row must reach its `against` row by `margin`; the overlay PNGs of seed 100's jobs
go to bench/figures/.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from common import (
    PAPER_EPOCHS,
    ROOT,
    Context,
    JobFailure,
    JobRun,
    JobSpec,
    code,
    median,
    num,
    paper_length,
    pct,
    run_job_or_failure,
    run_jobs_side_by_side,
    signed,
    table,
    verdict,
)

SEEDS = (100, 101, 102)
LOCAL = "cluster.backend=local"  # bitwise the Ray job, counted the same; one core per job
DIAGNOSE = "hybrid.diagnostics=true"  # one more backprop per stochastic round: the same parameters, more seconds
PRETRAINED = "PRETRAINED"  # in a row's overrides: the seed's pretraining job's output folder
PRETRAIN = JobSpec("paper-reference", ("data.classes=[0,1,2,3,4]", "train.epochs=5"))
FIGURES = ROOT / "bench" / "figures"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    spec: JobSpec | None  # None: the pretrained model as it is (no job; evaluated on the comparison's data)


@dataclass(frozen=True)
class Comparison:
    key: str
    title: str
    rows: tuple[Row, ...]
    target: str  # the row that must win
    against: str  # the row it must beat
    margin: float  # in dev accuracy (a fraction): target - against >= margin
    max_bytes: float = math.inf  # the target's bytes per worker per stochastic round may not exceed this


def _rows(preset: str, *rows: tuple[str, str, tuple[str, ...]]) -> tuple[Row, ...]:
    return tuple(Row(key, label, JobSpec(preset, sets)) for key, label, sets in rows)


GUIDED = ("hybrid.combine=guided", "hybrid.noise=gaussian", "hybrid.guided_m=4", "hybrid.guided_alpha=0.0")

IID = Comparison("iid", "IID, paper MLP, MNIST, 2 workers, r=4", _rows(
    "seedonly-r4",
    ("seedonly", "seedonly-r4: es, antithetic rank-1 trials, rank weights, shared trials", ()),
    ("stale", "stale control: re-apply the last gradient", ("hybrid.mode=stale",)),
    ("argmin", "argmin: Algorithm 2 as written (independent Gaussian trials)",
     ("hybrid.combine=argmin", "hybrid.trials=independent", "hybrid.noise=gaussian")),
    ("guided", "guided: the span of the last 4 gradients, rank weights, shared", GUIDED),
    ("quadratic", "guided with an isotropic half (guided_alpha 0.5), quadratic fit in the span of the last 2 "
     "gradients", (*GUIDED[:2], "hybrid.es_weights=quadratic", "hybrid.guided_m=2")),
    ("localsgd", "localsgd: the peer at the same bytes", ("hybrid.mode=localsgd",)),
    ("backprop", "backprop every round (4x the bytes)", ("hybrid.mode=backprop",)),
    ("seedonly-lr5", "seedonly-r4 at the paper's lr 5", ("train.lr=5.0",)),
    ("stale-lr5", "stale control at the paper's lr 5 (the acceptance check's control)", ("train.lr=5.0",
                                                                                         "hybrid.mode=stale")),
), target="seedonly", against="stale", margin=0.010)

NONIID = Comparison("noniid", "non-IID (Dirichlet alpha 0.1), paper MLP, MNIST, 4 workers, r=4", _rows(
    "noniid-r4",
    ("noniid", "noniid-r4: es, antithetic rank-1 trials, shared", ()),
    ("localsgd", "localsgd under the same split", ("hybrid.mode=localsgd",)),
    ("stale", "stale control", ("hybrid.mode=stale",)),
    ("argmin-shared", "argmin over shared Gaussian seeds (each scored on the whole minibatch)",
     ("hybrid.combine=argmin", "hybrid.noise=gaussian")),
    ("guided", "guided: the span of the last 4 gradients, rank weights, shared", GUIDED),
    ("backprop", "backprop every round (4x the bytes)", ("hybrid.mode=backprop",)),
    ("localsgd-lr5", "localsgd at the paper's lr 5", ("train.lr=5.0", "hybrid.mode=localsgd")),
), target="noniid", against="localsgd", margin=0.0)

FINETUNE = Comparison("finetune", "Fine-tuning on all ten digits after backprop on digits 0-4, 4 workers", (
    Row("zo", "finetune-zo: forward only, es over 5 shared rank-1 seeds x 2 signs",
        JobSpec("finetune-zo", (f"model.init_from={PRETRAINED}",))),
    Row("last", "localsgd, last layer only (first-order, inference memory)",
        JobSpec("finetune-zo", (f"model.init_from={PRETRAINED}", "hybrid.mode=localsgd", "model.trainable=last"))),
    Row("frozen", "the pretrained model as it is", None),
    Row("all", "localsgd, every layer (first-order; backward memory)",
        JobSpec("finetune-zo", (f"model.init_from={PRETRAINED}", "hybrid.mode=localsgd"))),
), target="zo", against="last", margin=0.010, max_bytes=100.0)

COMPARISONS: list[Comparison] = [IID, NONIID, FINETUNE]


def apply_seconds(family: str, n_workers: int = 2, k: int = 10, repeats: int = 5) -> float:
    """Median seconds of one es step on the paper MLP (N workers x k/2 seeds, every weight nonzero): the
    replicas' and the coordinator's extra work per stochastic round, gaussian (N*k/2 dense draws of the
    weights) against lowrank (N*k/2 rank-1 products)."""
    import time

    import numpy as np
    import torch

    from workers.hybrid import apply_decision
    from workers.models import mlp
    from workers.state import Decision, DecisionKind, HybridState, Hyper, Search
    from workers.steps import noise_spec

    model = mlp(784, [300], "sigmoid", "normal")
    hyper = Hyper(5.0, 1e-4, 1.25, 1000, model.num_weights, noise_spec(model, family, 1), search=Search("es", k=k))
    theta = torch.from_numpy(model.initial_parameters(1))
    state = HybridState(1, theta, torch.zeros_like(theta))
    weights = np.linspace(-0.1, 0.1, n_workers * k // 2).astype(np.float32) + np.float32(1e-3)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        apply_decision(state, Decision(1, DecisionKind.ES, array=weights), hyper)
        seconds.append(time.perf_counter() - t0)
    return median(seconds)


def job_spec(ctx: Context, row: Row, seed: int, pretrained: str | None) -> JobSpec:
    """The spec a row's seed runs: the seed, the local backend, diagnostics where trials or stale steps run,
    the pretraining folder in place of PRETRAINED."""
    assert row.spec is not None
    sets = tuple(s.replace(PRETRAINED, pretrained or PRETRAINED) for s in row.spec.overrides)
    spec = JobSpec(row.spec.preset, sets).plus(f"seed={seed}", LOCAL)
    if spec.config().hybrid.mode in ("hybrid", "stale", "zo"):
        spec = spec.plus(DIAGNOSE)
    return spec if "model.init_from" in " ".join(sets) else paper_length(ctx, spec)


def frozen_accuracy(spec: JobSpec) -> float:
    """Dev accuracy of the model model.init_from names, on the data of `spec` (the job it would start)."""
    import torch

    from coordinator.job import initial_theta
    from coordinator.parts import build_parts
    from workers.hybrid import evaluate

    cfg = spec.config()
    parts = build_parts(cfg)
    data, model = parts.data, parts.model
    acc = evaluate(model, torch.from_numpy(initial_theta(cfg, model)), data.x_dev, data.y_dev)[1]
    assert acc is not None
    return acc


@dataclass(frozen=True)
class RowResult:
    row: Row
    runs: list[JobRun]  # the seeds' jobs that finished; empty for the frozen row
    devs: list[float]  # one per seed, NaN for a job that failed (diverged)
    memory_mib: float = math.nan
    failures: tuple[str, ...] = ()


def run(ctx: Context, comparisons: list[Comparison] | None = None, pretrain: JobSpec = PRETRAIN,
        figures: Path = FIGURES) -> str:
    comparisons = COMPARISONS if comparisons is None else comparisons
    if ctx.epochs != PAPER_EPOCHS:  # a smoke run: the pretraining job as short as the others
        pretrain = pretrain.plus(f"train.epochs={ctx.epochs}")
    pre = dict(zip(SEEDS, run_jobs_side_by_side(ctx, [pretrain.plus(f"seed={s}") for s in SEEDS]), strict=True))
    folders = {s: str(r.out) for s, r in pre.items()}
    jobs = [(c, row, s) for c in comparisons for row in c.rows if row.spec is not None for s in SEEDS]
    runs = run_jobs_side_by_side(ctx, [job_spec(ctx, row, s, folders[s]) for _, row, s in jobs],
                                 fn=run_job_or_failure)
    by_row: dict[tuple[str, str], list[JobRun | JobFailure]] = {}
    for (c, row, _), r in zip(jobs, runs, strict=True):
        by_row.setdefault((c.key, row.key), []).append(r)
    results: dict[str, list[RowResult]] = {}
    for c in comparisons:
        out = []
        for row in c.rows:
            if row.spec is None:
                tuned = next(r for r in c.rows if r.spec and any(PRETRAINED in o for o in r.spec.overrides))
                devs = [frozen_accuracy(job_spec(ctx, tuned, s, folders[s])) for s in SEEDS]
                out.append(RowResult(row, [], devs))
                continue
            rs = by_row[(c.key, row.key)]
            done = [r for r in rs if isinstance(r, JobRun)]
            out.append(RowResult(row, done, [math.nan if isinstance(r, JobFailure) or r.final["dev_accuracy"] is None
                                             else r.final["dev_accuracy"] for r in rs],
                                 memory(job_spec(ctx, row, SEEDS[0], folders[SEEDS[0]])),
                                 tuple(r.message for r in rs if isinstance(r, JobFailure))))
        results[c.key] = out
    devs = [pre[s].final["dev_accuracy"] or math.nan for s in SEEDS]
    return render(ctx, comparisons, results, pretrain, devs, figures) + apply_note()


def memory(spec: JobSpec) -> float:
    """Worker 0's peak MiB above the start of its rounds (NaN when the measurement fails: said in the table)."""
    from worker_memory import peak_worker_memory

    sets = tuple(s for s in spec.overrides if s not in (LOCAL, DIAGNOSE))
    try:
        return peak_worker_memory(JobSpec(spec.preset, sets)).peak / 2**20
    except RuntimeError:
        return math.nan


def apply_note() -> str:
    g, lr = apply_seconds("gaussian"), apply_seconds("lowrank")
    return (f"\nThe es step itself (every replica and the coordinator, once per stochastic round), paper MLP, "
            f"2 workers x k = 10 (10 seeds), one thread, median of 5: gaussian {1000 * g:.1f} ms (10 dense draws "
            f"of the 235,200 weights), lowrank {1000 * lr:.1f} ms (10 rank-1 products).\n")


def per_worker_stochastic_bytes(run: JobRun) -> float:
    """Bytes up and down per worker per stochastic round."""
    r = run.result
    n, rounds = max(1, r.num_workers), r.rounds.stochastic
    return (r.bytes.stochastic.up + r.bytes.stochastic.down) / (n * rounds) if rounds else math.nan


def per_worker_bytes(run: JobRun) -> float:
    """The whole job's bytes (full and stochastic rounds, syncs) per worker."""
    return run.result.bytes.total / max(1, run.result.num_workers)


def diagnostic(run: JobRun, column: str) -> float:
    """The median over epochs of a diagnostics column (NaN where the job has none)."""
    xs = [float(h[column]) for h in run.history if h.get(column) not in (None, "") and math.isfinite(float(h[column]))]
    return median(xs)


def low_median(devs: list[float]) -> float:
    """The median of the seeds' accuracies, a failed job (NaN) counted as the lowest (NaN if it is the median)."""
    m = median([-math.inf if math.isnan(d) else d for d in devs])
    return math.nan if m == -math.inf else m


def dev_text(x: float) -> str:
    return "failed" if math.isnan(x) else pct(x)


def _fmt(x: float, fmt: str) -> str:
    return "n/a" if not math.isfinite(x) else format(x, fmt)


def render(ctx: Context, comparisons: list[Comparison], results: dict[str, list[RowResult]], pretrain: JobSpec,
           pretrain_devs: list[float], figures: Path) -> str:
    out = [f"Seeds {', '.join(map(str, SEEDS))}; {ctx.epochs} epochs for the IID and non-IID jobs (the fine-tuning "
           f"jobs: the preset's 5); the median and the range over the seeds. Every job ran with `--set {LOCAL}`: the "
           "Ray job's replicas one after another in one process, which ends with the Ray job's parameters and "
           "bytes to the bit, two jobs side by side (one per core), so seconds are one core's doing all N "
           "workers' work. Diagnostics (`--set hybrid.diagnostics=true`, one extra backprop per stochastic round "
           "that changes nothing else): `cos` is the median over epochs of the cosine between the step a "
           "stochastic round applied and the minibatch's true descent direction -g; `beat` the share of trials "
           "whose cost beat the unperturbed step's. Memory: worker 0's peak above the start of its rounds "
           "(bench/worker_memory.py, a fresh process, seed 100).\n",
           f"Pretraining for the fine-tuning rows: `{pretrain.hes_command()} --set seed=S` (dev accuracy on its "
           f"classes: {' / '.join(pct(x) for x in pretrain_devs)}); `PRETRAINED` below is its output folder.\n"]
    for c in comparisons:
        rows, devs, rr = [], {}, {r.row.key: r for r in results[c.key]}
        for res in results[c.key]:
            d = res.devs
            devs[res.row.key] = low_median(d)
            ranked = sorted(d, key=lambda x: -math.inf if math.isnan(x) else x)
            cmd = "(no job: evaluated)" if res.row.spec is None else code(res.row.spec.hes_command() + " --set seed=S")
            runs = res.runs
            nothing = "0" if res.row.spec is None else "n/a"  # the frozen model sends nothing; a failed row is unknown
            rows.append([
                f"{res.row.key}: {res.row.label}", cmd, dev_text(low_median(d)),
                f"{dev_text(ranked[0])} to {dev_text(ranked[-1])}", " / ".join(dev_text(x) for x in d),
                num(median([per_worker_stochastic_bytes(r) for r in runs]), 1) if runs else nothing,
                num(median([per_worker_bytes(r) for r in runs])) if runs else nothing,
                _fmt(res.memory_mib, ".2f"),
                f"{median([r.result.seconds.total for r in runs]):.0f}" if runs else "n/a",
                _fmt(median([diagnostic(r, "diag_cosine") for r in runs]) if runs else math.nan, "+.3f"),
                _fmt(median([diagnostic(r, "diag_beat_share") for r in runs]) if runs else math.nan, ".1%"),
            ])
        out.append(f"### {c.title}\n")
        failed = [f"- {r.row.key} failed: {m[:300]}" for r in results[c.key] for m in r.failures]
        if failed:
            out.append("\n".join(failed) + "\n")
        out.append(table(["job", "command", "dev (median)", "dev range", "dev per seed",
                          "B / worker / stochastic round", "B / worker, whole job", "worker peak MiB",
                          "seconds (median)", "cos", "beat"], rows))
        gap = devs[c.target] - devs[c.against]
        line = (f"\n- {c.target} - {c.against}: {signed(100 * gap, 2, ' pt')} of median dev accuracy "
                f"(target >= {signed(100 * c.margin, 1, ' pt')}")
        ok = gap >= c.margin
        if math.isfinite(c.max_bytes):
            b = median([per_worker_stochastic_bytes(r) for r in rr[c.target].runs])
            line += f", at <= {c.max_bytes:.0f} B per worker per round: {b:.1f} B"
            ok = ok and b <= c.max_bytes
        out.append(line + f"): {verdict(ok)}\n")
        out.append(overlays(c, rr, figures))
    return "\n".join(out)


def _seed(run: JobRun) -> str:
    return next((o.replace("=", " ") for o in run.spec.overrides if o.startswith("seed=")), "seed ?")


def overlays(c: Comparison, rr: dict[str, RowResult], figures: Path) -> str:
    """Seed 100's jobs of a comparison in `hes report`'s overlay figures, as PNGs in `figures`, linked relative
    to the repository."""
    from service.overlay import plot_overlay, series_from

    series = [series_from(r.runs[0].history, f"{r.row.key} ({_seed(r.runs[0])})", r.row.key)
              for r in rr.values() if r.runs]  # seed 100's job, or the first seed's that finished
    figs = plot_overlay(series)
    figures.mkdir(parents=True, exist_ok=True)
    links = []
    for stem in (s for s in ("accuracy_vs_epoch", "accuracy_vs_bytes") if s in figs):  # none if every job failed
        path = figures / f"science-{c.key}-{stem}.png"
        figs[stem].savefig(path, dpi=80)
        links.append(f"![{c.key}: {stem.replace('_', ' ')}]({os.path.relpath(path, ROOT)})")
    return "\nSeed 100, drawn by the same code as `hes report A B ...`:\n\n" + " ".join(links) + "\n"

