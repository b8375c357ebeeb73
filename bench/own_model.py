"""Section `own-model` (issue 14): the three examples/ jobs, each as backprop, H-ES r = 2 with Gaussian and with
low-rank trials, and the stale and localsgd controls at r = 2, on 2 Ray workers (coordinator in this process).

One run of each; the final metric is the test accuracy (and test loss) at the end, bytes are the payload of
every kind, seconds the job's own total. About 15 to 20 minutes on 2 busy cores: the tabular job runs its
YAML's 20 epochs, the ResNet 1 epoch of MNIST and the transformer 2 epochs (fewer than their YAMLs' 2 and 3).
"""
from __future__ import annotations

from common import Context, JobRun, JobSpec, code, num, pct, run_job, start_local_ray, table, verdict

from coordinator.ray_pool import ray_pool

RAY_CPUS = 2
WORKERS = 2
EXAMPLES = (  # (name, YAML, overrides that keep the section within its time)
    ("tabular (breast cancer, MLP 6,402 params)", "examples/tabular.yaml", ()),
    ("ResNet + GroupNorm on MNIST (19,714 params)", "examples/resnet_mnist.yaml", ("train.epochs=1",)),
    ("char transformer on the stdlib (254,720 params)", "examples/charlm.yaml", ("train.epochs=2",)),
)
ARMS = (
    ("backprop", ("hybrid.mode=backprop",)),
    ("H-ES r=2, gaussian", ("hybrid.mode=hybrid", "hybrid.r=2", "hybrid.noise=gaussian")),
    ("H-ES r=2, lowrank", ("hybrid.mode=hybrid", "hybrid.r=2", "hybrid.noise=lowrank")),
    ("stale r=2", ("hybrid.mode=stale", "hybrid.r=2")),
    ("localsgd r=2", ("hybrid.mode=localsgd", "hybrid.r=2")),
)
STOCHASTIC_UP_MAX, STOCHASTIC_DOWN_MAX = 32, 16  # issue 14: bytes per worker per stochastic round


def _per_stochastic_round(run: JobRun) -> tuple[float, float]:
    n = run.result.rounds.stochastic * WORKERS
    s = run.result.bytes.stochastic
    return (s.up / n, s.down / n) if n else (float("nan"), float("nan"))


def run(ctx: Context) -> str:
    start_local_ray(RAY_CPUS)
    parts = []
    for name, path, extra in EXAMPLES:
        rows, checks = [], []
        for arm, overrides in ARMS:
            spec = JobSpec(path, (*extra, *overrides, f"cluster.workers={WORKERS}"))
            r = run_job(ctx, spec, pool_factory=ray_pool)
            res, b = r.result, r.result.bytes
            up, down = _per_stochastic_round(r)
            if arm.startswith("H-ES"):
                checks.append(f"{arm}: {up:.1f} B up / {down:.1f} B down per worker per stochastic round, "
                              f"replica checks {res.replica_checks.checked} with {res.replica_checks.mismatches} "
                              f"mismatches: {verdict(up <= STOCHASTIC_UP_MAX and down <= STOCHASTIC_DOWN_MAX)} "
                              f"<= {STOCHASTIC_UP_MAX} / {STOCHASTIC_DOWN_MAX} B")
            acc = res.final.test_accuracy
            rows.append([arm, "n/a" if acc is None else pct(acc), f"{res.final.test_loss:.4f}",
                         f"{res.rounds.full} / {res.rounds.stochastic}", num(b.full.up + b.full.down),
                         num(b.stochastic.up + b.stochastic.down), num(b.total), f"{res.seconds.total:.1f}",
                         code(spec.hes_command())])
        parts.append(f"### {name}\n\n" + table(
            ["job", "test accuracy", "test loss", "rounds full / stochastic", "bytes full", "bytes stochastic",
             "bytes total", "seconds", "command"], rows) + "\n\n" + "\n".join(f"- {c}" for c in checks))
    return (
        "Each example of `examples/` as its YAML file has it, on 2 Ray workers (1 CPU each; the coordinator in "
        "the bench process), with the mode switched by `--set`; one run each, so a difference of a point or two "
        "in accuracy is within what another seed would give. Epochs: tabular 20 (its YAML's), ResNet 1 and "
        "transformer 2 (their YAMLs say 2 and 3), to keep the section at about 15 to 20 minutes. "
        "The machine was shared with other engineers' jobs and test suites while this ran (see the load "
        "averages above), so the seconds compare jobs of one table, measured minutes apart, only roughly. "
        "Bytes are payload (workers/messages.py): a full round moves every parameter up and down per worker, "
        "a stochastic round a seed and a cost up and a seed down; localsgd averages every r-th round and "
        "stale sends the round's header only.\n\n" + "\n\n".join(parts) + "\n")
