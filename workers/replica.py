"""A worker's logic without Ray: it caches (version, theta, grad), owns nothing, and does one round per task.

Round t uses the minibatch `schedule.batch(t)`. A full round computes the summed gradient on this worker's
shard of it; a stochastic round tries K seeded shifts on the WHOLE minibatch (so costs from different
workers compare) and keeps the best; localsgd rounds step on the shard. The shards split the minibatch among the
job's live workers (`members`, all of them until one leaves): this worker's shard is the one at its place among
them, so the live workers' shards cover every example of the minibatch once.

With `data.split: dirichlet` (workers/partition.py) a replica holds only its slot's partition of the training set,
and every round's work, full, localsgd and stochastic alike, uses its own share of the round's examples drawn from
that partition: it cannot see the others'. So its trials are scored on its share, not on the whole minibatch
(their costs then compare across workers only as well as the workers' data do).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from workers.hybrid import apply_decision, batch_loss_and_grad_sum, local_step, run_trials, trial_costs
from workers.messages import Result, RoundKind, Status, Sync, Task
from workers.models import Model
from workers.noise import trial_seed
from workers.partition import share, share_sizes
from workers.search import es_costs, round_seeds
from workers.state import DecisionKind, HybridState, Hyper


@dataclass(frozen=True)
class Schedule:
    """Which examples and which kind of work each round has; a pure function of the round index."""
    mode: str  # hybrid | backprop | stale | localsgd | zo
    r: int
    batch_size: int
    n_train: int
    seed: int
    shuffle: bool
    split: str = "iid"  # iid | dirichlet
    part_sizes: tuple[int, ...] = ()  # dirichlet: each worker slot's partition size

    @property
    def owned(self) -> bool:
        """Whether each worker slot takes its examples from a partition of its own (data.split: dirichlet)."""
        return self.split == "dirichlet"

    @property
    def assisted(self) -> bool:
        """r = 1 is the paper's "Assisted H-ES": every batch gets a full round, then trials around its gradient."""
        return self.mode == "hybrid" and self.r == 1

    @property
    def batches_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    @property
    def rounds_per_epoch(self) -> int:
        return self.batches_per_epoch * (2 if self.assisted else 1)

    def kind(self, t: int) -> RoundKind:
        j = t % self.rounds_per_epoch
        if self.mode == "backprop":
            return RoundKind.FULL
        if self.mode == "zo":  # forward passes only: no round computes a gradient
            return RoundKind.STOCHASTIC
        if self.assisted:
            return RoundKind.FULL if j % 2 == 0 else RoundKind.STOCHASTIC
        if self.mode == "localsgd":  # r local steps, the last of them followed by the average
            return RoundKind.AVERAGE if (t + 1) % self.r == 0 else RoundKind.LOCAL
        # Counted over the whole job (DESIGN.md: full when round % r == 0), so exactly 1/r of the rounds are
        # full. The paper's code counted inside each epoch; the two differ only when r does not divide the
        # rounds of an epoch (50 on MNIST: r = 3, 4), where the paper's way adds a full round to every epoch.
        return RoundKind.FULL if t % self.r == 0 else RoundKind.STOCHASTIC

    def batch(self, t: int) -> np.ndarray:
        epoch, j = divmod(t, self.rounds_per_epoch)
        if self.assisted:
            j //= 2  # the full round and the trials of one batch
        lo, hi = j * self.batch_size, (j + 1) * self.batch_size
        if not self.shuffle:
            return np.arange(lo, hi)
        return _epoch_order(self.seed, epoch, self.n_train)[lo:hi]

    def shard(self, t: int, worker: int, n_workers: int) -> np.ndarray:
        return np.array_split(self.batch(t), n_workers)[worker]

    def step(self, t: int) -> int:
        """The minibatch round t works on, counted over the whole job (a full round and its trials share one)."""
        epoch, j = divmod(t, self.rounds_per_epoch)
        return epoch * self.batches_per_epoch + (j // 2 if self.assisted else j)

    def own(self, t: int, worker: int) -> np.ndarray:
        """dirichlet: positions in slot `worker`'s partition of its share of round t's examples."""
        sizes = share_sizes(self.batch_size, len(self.part_sizes))
        return share(self.part_sizes[worker], sizes[worker], self.step(t), worker, self.seed, self.shuffle)


@functools.lru_cache(maxsize=2)  # the epoch running (and the next): one permutation per epoch, not per round
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    order = np.random.default_rng((seed, epoch)).permutation(n)
    order.flags.writeable = False
    return order


def digest(theta: torch.Tensor) -> bytes:
    """8 bytes of blake2b over the parameter bytes: equal iff the replicas agree (to 2^-64)."""
    return hashlib.blake2b(theta.detach().cpu().numpy().tobytes(), digest_size=8).digest()


class Replica:
    """One worker's cache and work. `handle(task)` is all the coordinator calls; `sync` refills it."""

    def __init__(self, model: Model, x_train: np.ndarray, y_train: np.ndarray, hyper: Hyper, schedule: Schedule,
                 job_seed: int, k: int, combine: str, worker: int, n_workers: int, device: str = "cpu") -> None:
        self.model, self.hyper, self.schedule = model, hyper, schedule
        self.job_seed, self.k, self.combine = job_seed, k, combine
        self.worker, self.n_workers = worker, n_workers
        self.members: tuple[int, ...] = tuple(range(n_workers))  # the live workers, among whom batches are split
        self.device = torch.device(device)
        self.x = torch.as_tensor(x_train).to(self.device)
        self.y = torch.as_tensor(y_train).to(self.device)
        self.state: HybridState | None = None

    def start(self, theta0: np.ndarray) -> None:
        """Version 0 from the initial parameters (which every node can derive from the job seed)."""
        self.state = HybridState(0, torch.from_numpy(np.array(theta0, copy=True)).to(self.device), None)

    def sync(self, s: Sync) -> None:
        if s.members is not None:
            self.members = s.members
        grad = None if s.grad is None else torch.from_numpy(np.array(s.grad, copy=True)).to(self.device)
        history = tuple(torch.from_numpy(np.array(h, copy=True)).to(self.device) for h in s.history)
        self.state = HybridState(s.version, torch.from_numpy(np.array(s.theta, copy=True)).to(self.device), grad,
                                 history)

    def shard(self, t: int) -> np.ndarray:
        """This worker's examples of round t's minibatch (dirichlet: positions in its own partition)."""
        if self.schedule.owned:
            return self.schedule.own(t, self.worker)
        return self.schedule.shard(t, self.members.index(self.worker), len(self.members))

    def handle(self, task: Task) -> Result:
        if task.members is not None:
            self.members = task.members
        st = self.state
        needed = task.round - 1 if task.decision.kind != DecisionKind.NONE else task.round
        if st is None or st.version != needed:
            return Result(task.round, self.worker, Status.NEED_SYNC)
        st = self.state = apply_decision(st, task.decision, self.hyper)
        dig = digest(st.theta) if task.want_digest else b""
        t = task.round
        if task.kind == RoundKind.APPLY and task.want_params:  # localsgd's last gather, weighted by shard
            return Result(t, self.worker, examples=len(self.shard(t - 1)),
                          array=st.theta.cpu().numpy(), digest=dig)
        if task.kind == RoundKind.APPLY or (task.kind == RoundKind.STOCHASTIC and self.k == 0):
            return Result(t, self.worker, digest=dig)
        search = self.hyper.search
        if task.kind == RoundKind.STOCHASTIC and search is not None and search.reports_costs:
            # shared trials: the same seeds on every worker, each scored on this worker's shard only; under
            # dirichlet a worker sees only its own share, whatever the trials
            shared = search.trials == "shared" or self.schedule.owned
            shard = self.shard(t) if shared else self.schedule.batch(t)
            idx = torch.tensor(shard, device=self.device)
            seeds = round_seeds(search, t, self.worker)
            score = es_costs if search.antithetic else trial_costs
            reference, costs = score(self.model, st, seeds, self.x[idx], self.y[idx], self.hyper)
            return Result(t, self.worker, improvements=sum(c < reference for c in costs), examples=len(idx),
                          digest=dig, costs=tuple(costs))
        if task.kind == RoundKind.STOCHASTIC:
            # iid: the whole minibatch, so that costs compare across workers; dirichlet: only its own share
            examples = self.shard(t) if self.schedule.owned else self.schedule.batch(t)
            idx = torch.tensor(examples, device=self.device)
            seeds = [trial_seed(self.job_seed, t, self.worker, i) for i in range(self.k)]
            out = run_trials(self.model, st, seeds, self.x[idx], self.y[idx], self.hyper,
                             compare_current=self.combine != "argmin")
            return Result(t, self.worker, seed=out.seed, cost=out.cost, improvements=out.improvements,
                          beats_current=out.beats_current, digest=dig)
        idx = torch.tensor(self.shard(t), device=self.device)
        if task.kind == RoundKind.FULL:
            loss_sum, grad_sum = batch_loss_and_grad_sum(self.model, st.theta, self.x[idx], self.y[idx],
                                                         self.hyper.frozen)
            return Result(t, self.worker, loss_sum=loss_sum, examples=len(idx),
                          array=grad_sum.cpu().numpy(), digest=dig)
        loss_sum, theta = local_step(self.model, st.theta, self.x[idx], self.y[idx], self.hyper)
        self.state = replace(st, theta=theta)
        array = theta.cpu().numpy() if task.kind == RoundKind.AVERAGE else None
        return Result(t, self.worker, loss_sum=loss_sum, examples=len(idx), array=array, digest=dig)
