"""Bench section network: the paper MLP on MNIST over a real multi-host network (deploy/netlab.py, root needed).

A head host (Ray head with no CPUs, the coordinator, the driver) and 3 worker hosts (one 1-CPU Ray worker node each),
network namespaces on one bridge, every host link limited with tc tbf. Per link rate, each row runs as a user would
(`hes train ... --set cluster.address=...` on the head host; Ray Train's TorchTrainer through bench/ddp.py), and the
kernel's link counters give the bytes on the busiest link. The resource model (the paper's Figs. 12 and 13) predicts
a row's seconds as its compute plus the busiest link direction's bytes over the link rate; the compute per epoch is
taken from the same row at 1 Gbit/s (its seconds less its bytes' time there), so the model is fitted at 1 Gbit/s and
predicts 100 Mbit/s and 10 Mbit/s.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, Context, code, table
from ddp import DdpRun

from coordinator.documents import JobResult

sys.path.insert(0, str(ROOT / "deploy"))
import netlab  # noqa: E402

WORKERS = 3
# (tc rate, epochs): the slowest link runs fewer epochs so the section fits in the time of a bench run
LINKS = [("1gbit", 2), ("100mbit", 2), ("10mbit", 1)]
FIT = "1gbit"  # the link rate the model's compute per epoch comes from
DDP = "Ray Train TorchTrainer (DDP, gloo)"
ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("backprop", "paper-hes-r2", ("hybrid.mode=backprop",)),
    ("localsgd r=2", "paper-hes-r2", ("hybrid.mode=localsgd",)),
    ("localsgd r=4", "paper-hes-r4", ("hybrid.mode=localsgd",)),
    ("H-ES lowrank r=2", "paper-hes-r2", ("hybrid.noise=lowrank",)),
    ("H-ES lowrank r=4", "paper-hes-r4", ("hybrid.noise=lowrank",)),
    ("stale r=4", "paper-hes-r4", ("hybrid.mode=stale",)),
    (DDP, "paper-hes-r2", ()),
]
JOB_TIMEOUT = 1800


@dataclass
class Row:
    label: str
    link: str
    epochs: int
    seconds: float  # training seconds (result.json seconds.total; DDP: from its first step)
    history: list[tuple[float, float]]  # (seconds, dev accuracy) after each epoch
    busiest: int  # bytes in the busiest direction of the busiest host link
    busiest_host: str
    status: str = "SUCCEEDED"
    workers: int = WORKERS
    rounds: int = 0  # full rounds (H-ES: result.json rounds.full; DDP: its steps)
    round_seconds: float = float("nan")  # seconds in those rounds (seconds.full_rounds; DDP: its steps' time)
    parameters: int = 0  # P, the model's parameters
    ring_sent: int = 0  # bytes the workers' allreduce sent, all workers' (result.json bytes.ring.full.sent)

    def to_reach(self, target: float) -> float:
        return next((s for s, acc in self.history if acc >= target), float("nan"))

    @property
    def final_dev(self) -> float:
        return self.history[-1][1] if self.history else float("nan")


def run_row(lab: netlab.Lab, ctx: Context, label: str, preset: str, sets: tuple[str, ...], epochs: int,
            workers: int = WORKERS) -> Row:
    """One row as a user runs it on the head host (DDP when `label` is DDP: `sets` go to bench/ddp.py, so they may
    name data keys only), with the busiest host link's bytes around it."""
    slug = label.replace(" ", "_").replace("=", "").replace(",", "")
    out = Path(tempfile.mkdtemp(prefix=f"net-{lab.link}-{workers}w-{slug}-", dir=ctx.work))
    common = ["--set", f"data.path={ctx.mnist}", "--set", f"train.epochs={epochs}"]
    for s in sets:
        common += ["--set", s]
    if label == DDP:
        cmd = [f"{lab.venv}/bin/python", str(ROOT / "bench" / "ddp.py"), "--address", lab.ray_address,
               "--config", preset, *common, "--workers", str(workers), "--out", str(out / "ddp.json")]
    else:
        cmd = [f"{lab.venv}/bin/hes", "train", "--config", preset, "--out", str(out), *common,
               "--set", f"cluster.address={lab.ray_address}", "--set", f"cluster.workers={workers}"]
    before = [lab.link_bytes(i) for i in range(1, lab.hosts + 1)]
    done = subprocess.run(["ip", "netns", "exec", lab.host(1), *cmd], env=lab.env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=JOB_TIMEOUT)
    after = [lab.link_bytes(i) for i in range(1, lab.hosts + 1)]
    moved = [max(a.tx - b.tx, a.rx - b.rx) for a, b in zip(after, before, strict=True)]
    busiest = max(range(len(moved)), key=lambda i: moved[i])
    row = Row(label, lab.link, epochs, float("nan"), [], moved[busiest], lab.host(busiest + 1), workers=workers)
    if label == DDP:
        if done.returncode != 0:
            raise RuntimeError(f"{label} at {lab.link}: {done.stderr[-800:]}")
        ddp = DdpRun.read(out / "ddp.json")
        row.history = [(h.seconds, h.dev_accuracy) for h in ddp.history]
        row.seconds, row.rounds, row.round_seconds = ddp.seconds, ddp.steps, ddp.step_seconds
        row.parameters = ddp.parameters
        return row
    if not (out / "result.json").is_file():
        raise RuntimeError(f"{label} at {lab.link}: no result.json: {done.stdout[-800:]}")
    result = JobResult.model_validate_json((out / "result.json").read_text())
    with open(out / "history.csv") as f:
        row.history = [(float(r["seconds"]), float(r["dev_accuracy"])) for r in csv.DictReader(f)]
    row.seconds, row.status, row.rounds = result.seconds.total, result.status.value, result.rounds.full
    row.round_seconds, row.parameters = result.seconds.full_rounds, result.num_parameters or 0
    row.ring_sent = result.bytes.ring.full.sent
    return row


def run_row_or_failed(lab: netlab.Lab, ctx: Context, label: str, preset: str, sets: tuple[str, ...], epochs: int,
                      workers: int = WORKERS) -> Row:
    """run_row, with a row that could not run (the job failed, timed out, or the sandbox broke) as a FAILED row
    that its table reports."""
    try:
        return run_row(lab, ctx, label, preset, sets, epochs, workers)
    except (RuntimeError, subprocess.TimeoutExpired, netlab.LabError) as e:
        return Row(label, lab.link, epochs, float("nan"), [], 0, "-", f"FAILED: {str(e)[-300:]}", workers)


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def measure(ctx: Context) -> tuple[list[Row], list[str]]:
    rows, loads = [], []
    for link, epochs in LINKS:
        lab = netlab.Lab(prefix="hesb", subnet="10.254.100", hosts=WORKERS + 1, link=link, serve=False)
        netlab.up(lab)
        try:
            for label, preset, sets in ROWS:
                rows.append(run_row_or_failed(lab, ctx, label, preset, sets, epochs))
                loads.append(f"{link} {label}: {load_average()}")
        finally:
            netlab.down(lab.prefix)
    return rows, loads


def link_seconds(row: Row) -> float:
    rate = netlab.rate_bits(row.link) / 8
    return row.busiest / rate if rate else 0.0


def predicted(row: Row, compute: dict[str, float]) -> float:
    """Compute (the row's seconds per epoch at FIT less its bytes' time, times its epochs) + busiest bytes / rate."""
    return compute.get(row.label, float("nan")) * row.epochs + link_seconds(row)


def verdict(rows: list[Row]) -> str:
    """Who wins and loses at one link rate: seconds against backprop, the fastest to 90%, the fewest bytes."""
    by = {r.label: r for r in rows}
    base = by["backprop"].seconds if "backprop" in by else float("nan")
    ratios = ", ".join(f"{r.label} {r.seconds / base:.2f}x" for r in rows if r.label != "backprop")
    reached = [r for r in rows if r.to_reach(0.90) == r.to_reach(0.90)]
    first = min(reached, key=lambda r: r.to_reach(0.90)).label if reached else "no row"
    fewest = min(rows, key=lambda r: r.busiest)
    best_dev = max(rows, key=lambda r: r.final_dev)
    return (f"Seconds against backprop's: {ratios}. First to 90% dev: {first}; highest final dev: "
            f"{best_dev.label} ({100 * best_dev.final_dev:.2f}%); fewest bytes on the busiest link: {fewest.label} "
            f"({fewest.busiest / 1e6:.1f} MB).")


def secs(x: float) -> str:
    return "not reached" if x != x else f"{x:.1f}"


def render(rows: list[Row], loads: list[str], started: float) -> str:
    compute = {r.label: (r.seconds - link_seconds(r)) / r.epochs for r in rows
               if r.link == FIT and r.status == "SUCCEEDED"}
    out = []
    for link, epochs in LINKS:
        body = []
        for r in (r for r in rows if r.link == link):
            model = predicted(r, compute)
            err = (model - r.seconds) / r.seconds if r.seconds else float("nan")
            body.append([r.label + ("" if r.status == "SUCCEEDED" else f" ({r.status})"), secs(r.to_reach(0.85)),
                         secs(r.to_reach(0.90)), secs(r.to_reach(0.95)), f"{100 * r.final_dev:.2f}%",
                         f"{r.seconds:.1f}",
                         f"{model:.1f} ({100 * err:+.0f}%)", f"{r.busiest / 1e6:.1f} MB ({r.busiest_host})"])
        out.append(f"### Links of {link}, {epochs} epoch(s)\n\n" + table(
            ["row", "s to 85% dev", "s to 90% dev", "s to 95% dev", "final dev", "seconds", "model seconds (error)",
             "busiest link"], body) + "\n\n" + verdict([r for r in rows if r.link == link]))
    hes = (f"hes train --config paper-hes-r2 --set cluster.address=<head>:{netlab.RAY_PORT} "
           f"--set cluster.workers={WORKERS} --set data.path=$HES_MNIST_DIR ...")
    return "\n".join([
        f"Head host (Ray head with `--num-cpus=0`, the driver and the coordinator) and {WORKERS} worker hosts "
        "(one 1-CPU Ray worker node each), network namespaces on one bridge, each host link limited in both "
        f"directions with `tc tbf` (deploy/netlab.py, `make net-up`). Each H-ES row runs as {code(hes)} on the "
        f"head host; the DDP row runs bench/ddp.py (Ray Train's TorchTrainer, {WORKERS} workers, gloo): the same "
        "model and initial parameters, data (read on each node), global batch 1000, lr 5.0, L2 term and epochs. "
        "Dev accuracy is measured after each epoch, so a time to 90%/95% is the end of the first epoch that "
        "reached it (85% is added because few rows reach 90% within these epochs). *seconds* are training seconds "
        "(result.json `seconds.total`, which includes starting the workers; DDP: from its first step, without Ray "
        "Train's start-up). *busiest link*: the host link whose busier direction carried the most "
        "bytes (kernel counters around the job, Ray's framing and heartbeats included). *model seconds*: the "
        "resource model, the row's compute per epoch (fitted at 1 Gbit/s: its seconds there less its busiest "
        "bytes over 1 Gbit/s) times its epochs plus the busiest direction's bytes over the link rate; its error is "
        "against the measured seconds (zero at 1 Gbit/s by construction).\n",
        *[t + "\n" for t in out],
        f"Load average after each row (other engineers' work shares the 2 cores): {'; '.join(loads)}.\n",
        f"Section measured in {time.time() - started:.0f} s.\n",
    ])


def run(ctx: Context) -> str:
    why = netlab.why_not_usable()
    if why:
        return f"Not measured here: {why}.\n"
    started = time.time()
    rows, loads = measure(ctx)
    return render(rows, loads, started)
