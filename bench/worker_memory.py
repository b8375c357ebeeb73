"""Peak memory of one worker's rounds, per mode (issue 15, item 5): `make bench` section "worker-memory", and a
function the other sections call for their rows (`peak_worker_memory`).

Measured in the bench, not in result.json: a worker's peak is a property of its process (Linux VmHWM), which the
local backend's replicas share with the coordinator and which a Ray worker would have to ship in a new wire
field, while the bench can give each figure a fresh process that does only one worker's work.

How. A fresh Python process builds the job's parts from its config (a preset and `--set` overrides) and worker
0's replica as a worker actor has it (its partition only under data.split dirichlet), gives it the starting
parameters and a real gradient, then for each kind of round the job's schedule has (full, stochastic, local,
average) runs one round as a warm-up (libraries allocate their buffers once) and one measured: the peak resident
set (VmHWM, reset through /proc/self/clear_refs) above the resident set just before it, on one thread, with
`MALLOC_MMAP_THRESHOLD_=65536` so that freed buffers leave the resident set. The worker's peak is the largest
of its kinds; "resident" is the process's whole resident set at that peak (Python, torch, the replica's data).
"""
from __future__ import annotations

import gc
import json
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from peak_memory import ROOT, in_fresh_process, peak_of

if TYPE_CHECKING:  # imported where used: the measuring process loads neither Ray nor common.py
    from common import Context, JobSpec

MODES = ("backprop", "stale", "hybrid", "localsgd")


@dataclass(frozen=True)
class WorkerMemory:
    by_kind: dict[str, float]  # peak bytes above the start of one round of each kind
    resident: float  # the process's peak resident set over the measured rounds

    @property
    def peak(self) -> float:
        return max(self.by_kind.values())


def peak_worker_memory(spec: JobSpec) -> WorkerMemory:
    """Worker 0's peak memory per kind of round for the job `spec` names, in a fresh process."""
    doc = json.loads(in_fresh_process(__file__, ["measure", spec.preset, *spec.overrides],
                                      f"worker memory of `{spec.hes_command()}`"))
    return WorkerMemory(doc["by_kind"], doc["resident"])


def _measure(preset: str, overrides: list[str]) -> dict[str, object]:
    """In this fresh process (see the module's docstring)."""
    import numpy as np
    import torch

    from coordinator.config import load_config
    from coordinator.job import make_replica
    from coordinator.parts import build_parts, worker_k
    from workers.hybrid import batch_loss_and_grad_sum
    from workers.messages import RoundKind, Sync, Task
    from workers.state import Decision, DecisionKind

    torch.set_num_threads(1)
    cfg = load_config(preset, overrides)
    parts = build_parts(cfg)
    model, schedule = parts.model, parts.schedule
    replica = make_replica(cfg, parts, 0)
    del parts  # the worker holds only its own arrays (the replica's)
    gc.collect()
    theta = model.initial_parameters(cfg.seed)
    idx = torch.tensor(replica.shard(0))
    grad = (batch_loss_and_grad_sum(model, torch.from_numpy(theta), replica.x[idx], replica.y[idx])[1]
            / len(idx)).numpy()
    kinds: dict[str, int] = {}
    for t in range(2 * max(2, cfg.hybrid.r) + 2):
        kinds.setdefault(schedule.kind(t).name.lower(), t)
    out: dict[str, float] = {}
    peak_resident = 0
    for name, t in kinds.items():
        task = Task(t, RoundKind[name.upper()], Decision(t - 1, DecisionKind.NONE))
        if name == "stochastic" and worker_k(cfg) == 0:
            continue  # the stale control's workers do nothing in a stochastic round
        replica.sync(Sync(t, np.array(theta), np.array(grad)))
        gc.collect()
        replica.handle(task)  # the warm-up
        replica.sync(Sync(t, np.array(theta), np.array(grad)))
        peak = peak_of(partial(replica.handle, task))
        out[name] = peak.above_start
        peak_resident = max(peak_resident, peak.resident)
    return {"by_kind": out, "resident": float(peak_resident)}


# --- the bench section ------------------------------------------------------------------------------------------------

def run(ctx: Context) -> str:
    """Peak worker memory of each mode: paper MLP on MNIST, batch 1000, 4 workers, iid and Dirichlet(0.1) placement,
    and the last-layer fine-tuning control."""
    from common import JobSpec, table

    specs = [(mode, "iid", JobSpec("paper-hes-r2", (f"hybrid.mode={mode}", "hybrid.r=4", "cluster.workers=4")))
             for mode in MODES]
    specs.append(("hybrid", "dirichlet 0.1", JobSpec("paper-hes-r2", ("hybrid.r=4", "cluster.workers=4",
                                                                       "data.split=dirichlet", "data.alpha=0.1"))))
    specs.append(("localsgd, trainable last", "iid", JobSpec("paper-hes-r2", (
        "hybrid.mode=localsgd", "hybrid.r=4", "cluster.workers=4", "model.trainable=last"))))
    specs.append(("backprop, trainable last", "iid", JobSpec("paper-hes-r2", (
        "hybrid.mode=backprop", "cluster.workers=4", "model.trainable=last"))))
    rows = []
    for label, split, spec in specs:
        m = peak_worker_memory(spec)
        kinds = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in m.by_kind.items())
        rows.append([label, split, f"`{spec.hes_command()}`", f"{m.peak / 2**20:.2f} MiB", kinds,
                     f"{m.resident / 2**20:.0f} MiB"])
    return "\n".join([
        "Peak memory of one worker's round, per mode (issue 15, item 5): MNIST, paper MLP 784-300-10 "
        "(P = 238,510, 4P = 0.91 MiB), batch 1000 split among 4 workers, K = 10. Each row is a fresh process doing "
        "worker 0's rounds only (bench/worker_memory.py): the peak resident set above the start of each kind of "
        "round (MiB, after a warm-up round), and the process's whole resident set at its peak (Python, torch and "
        "the worker's share of MNIST).",
        "",
        table(["mode", "placement", "command", "worker peak above start", "by kind of round (MiB)",
               "process resident"], rows),
        "",
        "- A stochastic round holds the forward passes of the whole minibatch (iid; its own share under dirichlet) "
        "and two parameter vectors (the trial's and the best so far); a full round the backward graph of its "
        "shard and the gradient. `trainable last` makes only the last layer's slices leaves of the backward, so "
        "its rounds keep a forward pass's activations plus the last layer's; on this small MLP the activations of "
        "a 250-example shard are smaller than a parameter vector (0.29 MiB for the hidden layer against 0.91 MiB), "
        "and the frozen backprop holds one vector more (the parameters with the trainable slices as leaves), so it "
        "does not come out smaller here; it does where the activations dominate (large batches, deep or wide models).",
    ])


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "measure":
    sys.path.insert(0, str(ROOT))
    sys.stdout.write(json.dumps(_measure(sys.argv[2], sys.argv[3:])))
    sys.stdout.flush()
