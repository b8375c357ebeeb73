"""Bench section allreduce (issue 21): full rounds through the coordinator, in a gloo ring among the workers, and
Ray Train's DDP, over the network sandbox of bench/network.py (deploy/netlab.py; root needed).

Part 1: seconds and bytes on the busiest link per full round for `cluster.full_rounds=server`, `allreduce` and DDP,
N = 2, 3, 6 workers (3 worker hosts: one 1-CPU Ray node each for N <= 3, 2-CPU nodes for N = 6), 100 Mbit/s and
10 Mbit/s links; backprop on MNIST's digits 0 and 1 (SUBSET, the paper's model) for a short job. Part 2: the time
to 95% dev accuracy of H-ES lowrank r=2, localsgd r=4 (both allreduce) and DDP, 3 workers at 100 Mbit/s, all of
MNIST. Each row runs as a user would (bench/network.py run_row), one sandbox per worker-node size, its link rate
changed in place between rates.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from common import Context, code, num, ratio, table
from network import DDP, Row, load_average, netlab, run_row_or_failed

PREFIX, SUBNET = "hesa", "10.254.120"  # this section's sandbox, apart from bench/network.py's
WORKER_HOSTS = 3
SUBSET = ("data.classes=[0,1]",)  # about a fifth of the training set, the same model: 10 rounds an epoch
ROUND_EPOCHS = 1  # epochs of a part-1 row
TTA_EPOCHS = 30  # epochs of a part-2 row: at 15 no row reached 95% dev (each ended near 94.2%)
TTA_LINK, TTA_WORKERS, TTA_TARGET = "100mbit", 3, 0.95
# issue 21's targets: busiest link per full round at N = 6 in units of 4P bytes; allreduce round / DDP step
BYTES_TARGET, BYTES_TARGET_N, SECONDS_TARGET, SECONDS_TARGET_LINK = 2.2, 6, 1.25, "100mbit"
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "server": ("paper-hes-r2", ("hybrid.mode=backprop", *SUBSET)),
    "allreduce": ("paper-hes-r2", ("hybrid.mode=backprop", "cluster.full_rounds=allreduce", *SUBSET)),
    DDP: ("paper-hes-r2", SUBSET),  # DDP takes only data keys: bench/ddp.py
}
TTA_ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("H-ES lowrank r=2", "paper-hes-r2", ("hybrid.noise=lowrank", "cluster.full_rounds=allreduce")),
    ("localsgd r=4", "paper-hes-r4", ("hybrid.mode=localsgd", "cluster.full_rounds=allreduce")),
    (DDP, "paper-hes-r2", ()),
)


@dataclass(frozen=True)
class Plan:
    """What a run measures: the full section by default, less for a smoke run."""
    links: tuple[str, ...] = ("100mbit", "10mbit")
    sizes: tuple[int, ...] = (2, 3, 6)
    kinds: tuple[str, ...] = tuple(KINDS)
    round_epochs: int = ROUND_EPOCHS
    tta_rows: tuple[tuple[str, str, tuple[str, ...]], ...] = TTA_ROWS
    tta_epochs: int = TTA_EPOCHS


@dataclass
class Measured:
    rounds: list[Row] = field(default_factory=list)  # part 1
    tta: list[Row] = field(default_factory=list)  # part 2
    loads: list[str] = field(default_factory=list)  # load average before and after each row


def node_cpus(workers: int) -> int:
    """CPUs of each worker node so that `workers` fit on the worker hosts, as evenly as they go."""
    return math.ceil(workers / WORKER_HOSTS)


def measure(ctx: Context, plan: Plan) -> Measured:
    got = Measured()
    cpus = sorted({node_cpus(n) for n in plan.sizes} | ({node_cpus(TTA_WORKERS)} if plan.tta_rows else set()))
    for c in cpus:
        lab = netlab.Lab(prefix=PREFIX, subnet=SUBNET, hosts=WORKER_HOSTS + 1, link=plan.links[0], worker_cpus=c,
                         serve=False)
        netlab.up(lab)
        try:
            for link in plan.links:
                for i in range(1, lab.hosts + 1):
                    lab.set_rate(i, link)
                lab = replace(lab, link=link)
                for n in (n for n in plan.sizes if node_cpus(n) == c):
                    for kind in plan.kinds:
                        preset, sets = KINDS[kind]
                        got.rounds.append(one(got, lab, ctx, kind, preset, sets, plan.round_epochs, n))
                if link == TTA_LINK and c == node_cpus(TTA_WORKERS):
                    for label, preset, sets in plan.tta_rows:
                        got.tta.append(one(got, lab, ctx, label, preset, sets, plan.tta_epochs, TTA_WORKERS))
        finally:
            netlab.down(PREFIX)
    return got


def one(got: Measured, lab: netlab.Lab, ctx: Context, label: str, preset: str, sets: tuple[str, ...], epochs: int,
        workers: int) -> Row:
    before = load_average()
    row = run_row_or_failed(lab, ctx, label, preset, sets, epochs, workers)
    got.loads.append(f"{lab.link} N={workers} {label}: {before} / {load_average()}")
    return row


def per_round(row: Row) -> float:
    """Seconds per full round (DDP: per step), start-up and evaluations left out."""
    return ratio(row.round_seconds, row.rounds)


def bytes_per_round(row: Row) -> float:
    """Bytes on the busiest link's busier direction per full round (the whole job's, start-up included)."""
    return ratio(row.busiest, row.rounds)


def vectors(row: Row) -> float:
    """bytes_per_round in parameter vectors (4P bytes)."""
    return ratio(bytes_per_round(row), 4 * row.parameters)


def ring_per_round(row: Row) -> float:
    """What one worker's ring sent per full round, as result.json counts it (allreduce rows only)."""
    return ratio(row.ring_sent, row.workers * row.rounds) if row.ring_sent else float("nan")


def find(rows: Sequence[Row], label: str, link: str, workers: int) -> Row | None:
    return next((r for r in rows if (r.label, r.link, r.workers) == (label, link, workers)
                 and r.status == "SUCCEEDED"), None)


@dataclass(frozen=True)
class Target:
    what: str
    value: float  # nan: not measured
    limit: float

    @property
    def line(self) -> str:
        if self.value != self.value:
            return f"- {self.what}: not measured in this run (target <= {self.limit:g}): **FAIL**"
        ok = "PASS" if self.value <= self.limit else "FAIL"
        return f"- {self.what}: {self.value:.2f} (target <= {self.limit:g}): **{ok}**"


def targets(rows: Sequence[Row], links: Sequence[str], sizes: Sequence[int]) -> list[Target]:
    """Issue 21's two targets: the allreduce rows' busiest link per full round at N = 6 (each link rate), and their
    full round against DDP's step at 100 Mbit/s (each N)."""
    out = []
    for link in links:
        ar = find(rows, "allreduce", link, BYTES_TARGET_N)
        out.append(Target(f"allreduce at N = {BYTES_TARGET_N}, {link}: busiest link per full round, in 4P bytes",
                          vectors(ar) if ar else float("nan"), BYTES_TARGET))
    for n in sizes:
        ar, ddp = find(rows, "allreduce", SECONDS_TARGET_LINK, n), find(rows, DDP, SECONDS_TARGET_LINK, n)
        value = ratio(per_round(ar), per_round(ddp)) if ar and ddp else float("nan")
        out.append(Target(f"allreduce at N = {n}, {SECONDS_TARGET_LINK}: full round / DDP step", value, SECONDS_TARGET))
    return out


def reading(rows: Sequence[Row], link: str, sizes: Sequence[int]) -> str:
    """Per N, allreduce's seconds and busiest-link bytes per full round against the server's and DDP's."""
    said = []
    for n in sizes:
        ar = find(rows, "allreduce", link, n)
        others = [(name, find(rows, kind, link, n)) for name, kind in (("the server's", "server"), ("DDP's", DDP))]
        vs = [f"{ratio(per_round(ar), per_round(o)):.2f}x {name} seconds and "
              f"{ratio(bytes_per_round(ar), bytes_per_round(o)):.2f}x its bytes" for name, o in others if ar and o]
        if vs:
            said.append(f"at N = {n} allreduce takes " + ", ".join(vs))
    return ("Per full round, on the busiest link: " + "; ".join(said) + ".") if said else ""


def mb(x: float) -> str:
    return "n/a" if x != x else f"{x / 1e6:.2f} MB"


def rounds_table(rows: Sequence[Row], link: str) -> str:
    body = []
    for r in sorted((r for r in rows if r.link == link), key=lambda r: r.workers):
        name = r.label if r.label != DDP else "Ray Train DDP"
        if r.status != "SUCCEEDED":
            body.append([r.workers, f"{name} ({r.status})", *["n/a"] * 7])
            continue
        ddp = find(rows, DDP, link, r.workers)
        body.append([r.workers, name, r.rounds, f"{1000 * per_round(r):.0f} ms",
                     f"{ratio(per_round(r), per_round(ddp)):.2f}x" if ddp else "n/a",
                     f"{mb(bytes_per_round(r))} ({r.busiest_host})", f"{vectors(r):.2f}", mb(ring_per_round(r)),
                     f"{r.seconds:.1f}"])
    return table(["N", "full rounds via", "rounds", "s per full round", "vs DDP's step", "busiest link per round",
                  "in 4P", "ring sent per worker per round", "job seconds"], body)


def tta_table(rows: Sequence[Row], epochs: int) -> str:
    body = []
    for r in rows:
        reach = r.to_reach(TTA_TARGET)
        body.append([r.label + ("" if r.status == "SUCCEEDED" else f" ({r.status})"),
                     f"not reached in {epochs} epochs" if reach != reach else f"{reach:.1f}",
                     f"{100 * r.final_dev:.2f}%", f"{r.seconds:.1f}", mb(r.busiest) + f" ({r.busiest_host})"])
    return table(["row", f"s to {100 * TTA_TARGET:.0f}% dev", "final dev", "seconds", "busiest link (job)"], body)


def render(got: Measured, plan: Plan, started: float) -> str:
    params = next((r.parameters for r in got.rounds + got.tta if r.parameters), 0)
    hes = (f"hes train --config paper-hes-r2 --set cluster.address=<head>:{netlab.RAY_PORT} --set cluster.workers=N "
           f"--set hybrid.mode=backprop --set cluster.full_rounds=server|allreduce --set {SUBSET[0]} "
           f"--set train.epochs={plan.round_epochs}")
    skipped = [k for k in KINDS if k not in plan.kinds] + [f"N = {n}" for n in (2, 3, 6) if n not in plan.sizes]
    parts = [
        f"A head host (Ray head with `--num-cpus=0`, the driver and the coordinator) and {WORKER_HOSTS} worker hosts "
        "on one bridge, every host link limited in both directions with `tc tbf` (deploy/netlab.py); N <= 3 "
        "workers run one per host on 1-CPU Ray nodes, N = 6 two per host on 2-CPU nodes. The link rate is changed "
        f"in place between rates. P = {num(params)} parameters (4P = {mb(4 * params)}).\n",
        f"### Part 1: a full round, {code(hes)}; DDP: bench/ddp.py (Ray Train's TorchTrainer, gloo) on the same "
        "examples\n",
        "*s per full round*: result.json `seconds.full_rounds / rounds.full` (every round of a backprop job is "
        "full); DDP: its steps' own seconds over its steps on rank 0 (forward, backward with the allreduce, "
        "update; not Ray Train's start-up nor the evaluations). *busiest link per round*: the host link whose "
        "busier direction carried the most bytes during the whole job (kernel counters; start-up, the "
        "evaluations' state reads and Ray's own traffic included), over the full rounds; *in 4P*: the same in "
        "parameter vectors. *ring sent per worker per round*: result.json `bytes.ring.full.sent / N / rounds` "
        "(allreduce only). *job seconds*: result.json `seconds.total` (workers' start-up included); DDP: from its "
        f"first step. {plan.round_epochs} epoch(s) of digits 0 and 1.\n" +
        (f"Not measured in this run: {', '.join(skipped)}.\n" if skipped else ""),
    ]
    for link in plan.links:
        parts.append(f"#### Links of {link}\n\n{rounds_table(got.rounds, link)}\n\n"
                     f"{reading(got.rounds, link, plan.sizes)}\n")
    parts.append("Targets (issue 21):\n\n" + "\n".join(t.line for t in targets(got.rounds, plan.links, plan.sizes))
                 + "\n")
    if plan.tta_rows:
        parts.append(f"### Part 2: time to {100 * TTA_TARGET:.0f}% dev, {TTA_WORKERS} workers at {TTA_LINK}, all of "
                     f"MNIST, {plan.tta_epochs} epoch(s)\n\nH-ES rows with `cluster.full_rounds=allreduce`. Dev "
                     "accuracy is measured after each epoch: a time to 95% is the end of the first epoch that "
                     "reached it. H-ES seconds are result.json's (from the job's start, workers' start-up "
                     "included); DDP's from its first step. The epochs are capped so that the section fits in "
                     "about half an hour: a row that needs more says so.\n\n"
                     + tta_table(got.tta, plan.tta_epochs) + "\n")
    parts += [f"Load average before / after each row (other engineers' work shares the 2 cores): "
              f"{'; '.join(got.loads)}.\n", f"Section measured in {time.time() - started:.0f} s.\n"]
    return "\n".join(parts)


def run(ctx: Context, plan: Plan | None = None) -> str:
    why = netlab.why_not_usable()
    if why:
        return f"Not measured here: {why}.\n"
    plan = plan or Plan()
    started = time.time()
    return render(measure(ctx, plan), plan, started)
