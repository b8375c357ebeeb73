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
from typing import Protocol

import numpy as np
import torch

from workers.collective import CollectiveFailed
from workers.hybrid import apply_decision, batch_loss_and_grad_sum, local_step, run_trials, trial_costs
from workers.messages import Result, RoundKind, Status, Sync, Task
from workers.models import Model
from workers.noise import trial_seed
from workers.partition import share, share_sizes
from workers.search import episode_costs, es_costs, round_seeds
from workers.state import Decision, DecisionKind, HybridState, Hyper


class Reducer(Protocol):
    """The workers' own allreduce (workers/collective.py Group): sums a CPU float32 tensor in place over the job's
    live workers; (bytes sent, bytes received); CollectiveFailed when a peer is gone."""

    def allreduce_sum(self, values: torch.Tensor) -> tuple[int, int]: ...


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


def state_sync(st: HybridState, reduced: np.ndarray | None = None) -> Sync:
    """A state as the Sync message that carries it (the coordinator's snapshot, a replica's pull)."""
    return Sync(st.version, st.theta.cpu().numpy(), None if st.grad is None else st.grad.cpu().numpy(),
                history=tuple(h.cpu().numpy() for h in st.history), obs=st.obs, reduced=reduced)


def synced_state(s: Sync, device: torch.device) -> HybridState:
    """The state a Sync carries, in arrays of its own on `device` (a replica's sync, the coordinator's pull)."""
    def own(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, copy=True)).to(device)

    return HybridState(s.version, own(s.theta), None if s.grad is None else own(s.grad),
                       tuple(own(h) for h in s.history), None if s.obs is None else np.array(s.obs, copy=True))


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
        # cluster.full_rounds allreduce: full rounds (and localsgd averages) are summed among the workers through
        # `group` (None until the coordinator forms one, then the round fails and is redone); `reduced` holds the
        # (round, batch-mean array) of the last one, which the next decision names instead of carrying it
        self.allreduce = False
        self.group: Reducer | None = None
        self.reduced: tuple[int, np.ndarray] | None = None
        # the state as the coordinator holds it: `state` without the local steps localsgd takes between averages
        self.settled: HybridState | None = None

    def start(self, theta0: np.ndarray) -> None:
        """Version 0 from the initial parameters (which every node can derive from the job seed)."""
        self.state = self.settled = HybridState(0, torch.from_numpy(np.array(theta0, copy=True)).to(self.device),
                                                None)

    def sync(self, s: Sync) -> None:
        if s.members is not None:
            self.members = s.members
        self.state = self.settled = synced_state(s, self.device)

    def pull(self, version: int) -> Sync | None:
        """allreduce: the state at `version` as the coordinator holds it, with the array the workers reduced in that
        round (for the decision not applied yet); None when this replica is not at `version`."""
        st = self.settled
        if st is None or st.version != version:
            return None
        reduced = self.reduced[1] if self.reduced is not None and self.reduced[0] == version else None
        return state_sync(st, reduced)

    def _own_array(self, decision: Decision) -> Decision | None:
        """A reduced decision with this replica's copy of its array; None when it has none (a restarted worker)."""
        if not decision.reduced:
            return decision
        if self.reduced is None or self.reduced[0] != decision.round:
            return None
        return replace(decision, array=self.reduced[1], reduced=False)

    def _reduce(self, values: torch.Tensor, examples: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """allreduce: the examples-weighted sum of `values` over the group divided by all examples (a batch-mean
        gradient from summed gradients, or the average of parameters weighted by shard), and the ring's bytes;
        None when the collective failed."""
        if self.group is None:
            return None
        buf = torch.cat([values.detach().to("cpu", torch.float32), torch.tensor([float(examples)])])
        try:
            traffic = self.group.allreduce_sum(buf)
        except CollectiveFailed:
            self.group = None  # spent: the coordinator forms a new one before the round is redone
            return None
        total = buf[:-1]
        total /= buf[-1]  # the same float32 division as the coordinator's combine
        return total.numpy(), traffic

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
        decision = self._own_array(task.decision)
        if st is None or st.version != needed or decision is None:
            return Result(task.round, self.worker, Status.NEED_SYNC)
        settled = self.settled
        st = self.state = apply_decision(st, decision, self.hyper)
        if decision.kind == DecisionKind.LOCAL and settled is not None:
            self.settled = replace(settled, version=st.version)  # the coordinator saw no local step
        elif decision.kind != DecisionKind.NONE:
            self.settled = st
        dig = digest(st.theta) if task.want_digest else b""
        t = task.round
        if task.kind == RoundKind.APPLY and task.want_params:  # localsgd's last gather, weighted by shard
            return Result(t, self.worker, examples=len(self.shard(t - 1)),
                          array=st.theta.cpu().numpy(), digest=dig)
        if task.kind == RoundKind.APPLY or (task.kind == RoundKind.STOCHASTIC and self.k == 0):
            return Result(t, self.worker, digest=dig)
        search = self.hyper.search
        if task.kind == RoundKind.STOCHASTIC and search is not None and self.hyper.objective is not None:
            # a black-box objective: the trials play episodes, no examples; `examples` counts the episodes
            costs, stats = episode_costs(self.model, st, round_seeds(search, t, self.worker), t, self.worker,
                                         self.hyper)
            return Result(t, self.worker, examples=len(costs) * self.hyper.objective.episodes, digest=dig,
                          costs=tuple(costs), stats=() if stats is None else tuple(float(v) for v in stats))
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
            if self.allreduce:
                return self._reduced_result(t, grad_sum, loss_sum, len(idx), dig)
            return Result(t, self.worker, loss_sum=loss_sum, examples=len(idx),
                          array=grad_sum.cpu().numpy(), digest=dig)
        loss_sum, theta = local_step(self.model, st.theta, self.x[idx], self.y[idx], self.hyper)
        if task.kind == RoundKind.AVERAGE and self.allreduce:
            res = self._reduced_result(t, theta * len(idx), loss_sum, len(idx), dig)
            if res.status == Status.OK:  # a failed round is redone from the state before its local step
                self.state = replace(st, theta=theta)
            return res
        self.state = replace(st, theta=theta)
        array = theta.cpu().numpy() if task.kind == RoundKind.AVERAGE else None
        return Result(t, self.worker, loss_sum=loss_sum, examples=len(idx), array=array, digest=dig)

    def _reduced_result(self, t: int, values: torch.Tensor, loss_sum: float, examples: int, dig: bytes) -> Result:
        """A full or average round's result under allreduce: the scalars and the ring's bytes; the reduced array
        stays here (`reduced`) for the decision that names it."""
        out = self._reduce(values, examples)
        if out is None:
            return Result(t, self.worker, Status.COLLECTIVE_FAILED)
        self.reduced = (t, out[0])
        return Result(t, self.worker, loss_sum=loss_sum, examples=examples, digest=dig, ring=out[1])
