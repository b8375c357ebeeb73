"""Ray Train's TorchTrainer (DDP over gloo) on a job's model, data and schedule: the peer a Ray user would pick.

    python bench/ddp.py --address HOST:PORT --config paper-hes-r2 --set data.path=... --workers 3 --out run.json

Same model (workers/models.py, the same initial parameters), data (the job's own loader, coordinator/parts.py
load_data, read on each worker's node: data.classes keeps the same examples), global batch, learning rate, L2 term
(2 * lr * l2 * W on the weights) and epochs as `hes train`; each of the workers takes its share of every global
minibatch and DDP averages the gradients. Rank 0 evaluates dev accuracy after each epoch and times its steps
(forward, backward with DDP's allreduce, update; not Ray Train's start-up nor the evaluations); the history (epoch,
seconds since training began, dev accuracy), the steps and their seconds go to --out as JSON (DdpRun).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from coordinator.config import load_config
from coordinator.parts import load_data
from workers.models import build_model


@dataclass(frozen=True)
class Epoch:
    epoch: int
    seconds: float  # since training began
    dev_accuracy: float


@dataclass(frozen=True)
class DdpRun:
    """What one run wrote to --out."""
    history: list[Epoch]
    seconds: float  # training seconds, to the end of the last epoch's evaluation
    wall_seconds: float  # trainer.fit() as a whole, Ray Train's start-up included
    steps: int
    step_seconds: float  # the steps' own seconds, summed (rank 0)
    parameters: int  # P

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> DdpRun:
        doc = json.loads(path.read_text())
        return cls(**{**doc, "history": [Epoch(**h) for h in doc["history"]]})


def train_loop(loop: dict[str, Any]) -> None:
    """One DDP worker: the global minibatch's share, averaged gradients, the job's update rule. Rank 0 writes its
    history and step times to loop["history"] (the sandbox's hosts share one file system)."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    from coordinator.config import JobConfig

    cfg = JobConfig.model_validate(loop["config"])
    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    data = load_data(cfg)
    model = build_model(cfg.model.arch, cfg.model.hidden, cfg.model.activation, cfg.model.init, data.image_side)
    net = Flat(model)
    net.theta.data = torch.from_numpy(model.initial_parameters(cfg.seed))
    ddp = DistributedDataParallel(net)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xd, yd = torch.from_numpy(data.x_dev), torch.from_numpy(data.y_dev)
    lr, l2, batch, nw = cfg.train.lr, cfg.train.l2, cfg.train.batch_size, model.num_weights
    rounds = len(x) // batch
    history, started, step_seconds = [], time.perf_counter(), 0.0
    for epoch in range(1, cfg.train.epochs + 1):
        order = torch.from_numpy(np.random.default_rng(cfg.seed + epoch).permutation(len(x)))
        for r in range(rounds):
            step_started = time.perf_counter()
            mine = order[r * batch:(r + 1) * batch][rank::size]
            loss = F.cross_entropy(ddp(x[mine]), y[mine])
            ddp.zero_grad()
            loss.backward()
            with torch.no_grad():
                theta, grad = net.theta, net.theta.grad
                decay = 2.0 * lr * l2 * theta[:nw]
                theta.sub_(lr * grad)
                theta[:nw].sub_(decay)
            step_seconds += time.perf_counter() - step_started
        if rank == 0:
            with torch.no_grad():
                dev = float((net(xd).argmax(1) == yd).float().mean())
            history.append({"epoch": epoch, "seconds": time.perf_counter() - started, "dev_accuracy": dev})
    if rank == 0:
        Path(loop["history"]).write_text(json.dumps({"history": history, "steps": rounds * cfg.train.epochs,
                                                     "step_seconds": step_seconds,
                                                     "parameters": model.num_parameters}))


class Flat(torch.nn.Module):
    """The job's flat parameter vector as one torch Parameter, forward through workers/models.py."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.theta = torch.nn.Parameter(torch.zeros(model.num_parameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward(self.theta, x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", required=True, help="the Ray cluster to join")
    ap.add_argument("--config", required=True, help="a preset or config file, as for hes train")
    ap.add_argument("--set", action="append", default=[], help="key=value overrides, as for hes train")
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--out", required=True, help="JSON file for the history and seconds")
    args = ap.parse_args(argv)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = load_config(args.config, args.set)
    # gloo binds the interface named here on every node (netlab names each host's link eth0)
    env = {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "eth0"), "OMP_NUM_THREADS": "1"}
    ray.init(address=args.address, log_to_driver=False, runtime_env={"env_vars": env})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hes-ddp-") as storage:
        trainer = TorchTrainer(train_loop, train_loop_config={"config": cfg.model_dump(mode="json"),
                                                              "history": str(Path(args.out).resolve())},
                               torch_config=TorchConfig(backend="gloo"),
                               scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False),
                               run_config=RunConfig(storage_path=storage, name="ddp"))
        result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error is not None:
        raise result.error
    rank0 = json.loads(Path(args.out).read_text())
    history = [Epoch(**h) for h in rank0["history"]]
    DdpRun(history, history[-1].seconds if history else 0.0, wall, rank0["steps"], rank0["step_seconds"],
           rank0["parameters"]).write(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
