"""One training job from config to outputs: data, model, pool, the round loop, evaluation, checkpoints.

Runs in `hes train` (cluster.workers: 0, in this process) and inside the coordinator actor (Ray path).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coordinator.accounting import Counters
from coordinator.config import JobConfig
from coordinator.documents import (
    ByteCounts,
    FinalMetrics,
    JobResult,
    JobStatus,
    ProgressInfo,
    ReplicaChecks,
    RoundCounts,
    Seconds,
    SentBytes,
    Snapshot,
    WorkerCounts,
    first_line,
    restarts_note,
)
from coordinator.outputs import (
    DIAGNOSTIC_COLUMNS,
    RETURN_COLUMNS,
    CheckpointMeta,
    HistoryRow,
    OutputError,
    load_checkpoint,
    load_history,
    save_checkpoint,
    write_history,
    write_json,
    write_model,
    write_text,
)
from coordinator.parts import JobParts, build_parts, worker_k
from coordinator.pool import LocalPool, ReplicaPool
from coordinator.rounds import Pool, ReplicasLost, RoundEvent, RoundLoop
from workers.blackbox import evaluate_return
from workers.hybrid import batch_loss_and_grad_sum, evaluate
from workers.messages import RoundKind
from workers.models import Model
from workers.replica import Replica
from workers.state import Diverged, HybridState, require_finite, require_finite_parameters
from workers.steps import keep_frozen

log = logging.getLogger("hes.job")
MAX_REWINDS = 3  # allreduce: times a job goes back to one checkpoint after losing every replica, before it fails


@dataclass
class Progress:
    """A running job's state of progress; `snapshot()` is what the service and the progress bar show."""
    status: JobStatus = JobStatus.PENDING
    message: str = ""
    round: int = 0
    total_rounds: int = 0
    epoch: int = 0
    epochs: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    restarts: int = 0  # times the job was restarted from a checkpoint after its coordinator died

    @property
    def fraction(self) -> float:
        return self.round / self.total_rounds if self.total_rounds else 0.0

    def snapshot(self, workers: WorkerCounts | None = None) -> Snapshot:
        c = self.counters
        return Snapshot(
            status=self.status, message=self.message or c.workers_note,  # e.g. "ran on 1 of 2 workers ..."
            progress=ProgressInfo(round=self.round, total_rounds=self.total_rounds, epoch=self.epoch,
                                  epochs=self.epochs, fraction=round(self.fraction, 6)),
            metrics=dict(self.latest), rounds=RoundCounts(**c.rounds), bytes=ByteCounts.model_validate(c.bytes_doc()),
            seconds=Seconds(**c.seconds), improvements=c.improvements, replica_checks=replica_checks(c),
            restarts=self.restarts, workers=workers or WorkerCounts(), worker_failures=c.worker_failures,
            sent=SentBytes(up=dict(c.up), down=dict(c.down)))


def replica_checks(c: Counters) -> ReplicaChecks:
    return ReplicaChecks(checked=c.replica_checked, mismatches=c.replica_mismatches)


def initial_theta(cfg: JobConfig, model: Model) -> np.ndarray:
    """The job's parameters at round 0: the seed's, or those of the finished job in model.init_from."""
    if cfg.model.init_from is None:
        return model.initial_parameters(cfg.seed)
    return load_model_parameters(Path(cfg.model.init_from), model)


def load_model_parameters(folder: Path, model: Model) -> np.ndarray:
    """The flat parameters of folder/model.safetensors, checked tensor by tensor against `model`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not folder.is_dir():
        raise ValueError(f"model.init_from: {str(folder)[:200]!r} is not a folder (a finished job's output folder)")
    path = folder / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"model.init_from: {str(folder)[:200]!r} holds no model.safetensors (did the job finish?)")
    try:
        named = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"model.init_from: {path} cannot be read: {err}") from None
    expected = (*model.weights, *model.biases)
    missing = [t.name for t in expected if t.name not in named]
    extra = sorted(set(named) - {t.name for t in expected})
    if missing or extra:
        raise ValueError(f"model.init_from: {path} does not fit this model: tensors missing {missing}, "
                         f"unexpected {extra}")
    parts = []
    for t in expected:
        a = named[t.name]
        if tuple(a.shape) != t.shape:
            raise ValueError(f"model.init_from: {path}: tensor {t.name} has shape {tuple(a.shape)}, this model's "
                             f"is {t.shape} ({math.prod(a.shape)} vs {math.prod(t.shape)} parameters)")
        parts.append(np.asarray(a, dtype=np.float32).reshape(-1))
    return np.concatenate(parts)


def divergence_hint(cfg: JobConfig) -> str:
    knobs = [f"train.lr, now {cfg.train.lr:g}"]
    if cfg.hybrid.mode in ("hybrid", "zo"):  # the modes whose trials are spread by sigma
        knobs.append(f"hybrid.sigma, now {cfg.hybrid.sigma:g}")
    return "lower " + ", or ".join(knobs)


def failure_message(err: BaseException, cfg: JobConfig, total_rounds: int) -> str:
    """Why a job failed, in one readable line: the round and the knob for a divergence, the file and the output
    for a write that failed, else the error's type and first line (no terminal colours)."""
    if isinstance(err, Diverged):
        of = f" of {total_rounds}" if total_rounds else ""
        return f"diverged at round {err.round}{of}: {err.reason} ({divergence_hint(cfg)})"
    if isinstance(err, OutputError):
        return str(err)
    line = first_line(err, 500)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def failed_result(cfg: JobConfig, progress: Progress, num_parameters: int | None, out_dir: Path,
                  trace: str) -> JobResult:
    """result.json of a failed job: what it had done, and why it stopped (the traceback in error.log).

    Writing is best effort: when the disk is what failed, the document returned still says why."""
    p = progress.snapshot()
    doc = JobResult(status=JobStatus.FAILED, message=progress.message, config=cfg.model_dump(),
                    num_parameters=num_parameters, num_workers=cfg.cluster.workers, rounds=p.rounds, bytes=p.bytes,
                    seconds=p.seconds, replica_checks=p.replica_checks, restarts=progress.restarts)
    for name, write in (("error.log", lambda: write_text(out_dir / "error.log", trace)),
                        ("result.json", lambda: write_json(out_dir / "result.json", doc.model_dump(mode="json")))):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write()
        except OSError as err:
            log.error("job %s failed (%s) and its %s could not be written: %s", cfg.name, progress.message,
                      name, err)
    return doc


PoolFactory = Callable[[JobConfig, JobParts, Counters], Pool]


class Job:
    """Owns the parameters (the single source of truth) and runs rounds through a pool."""

    def __init__(self, cfg: JobConfig, out_dir: str | Path, resume: bool = False,
                 pool_factory: PoolFactory | None = None, restarts: int = 0) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.parts = build_parts(cfg)
        self.data, self.model, self.hyper, self.schedule = (self.parts.data, self.parts.model, self.parts.hyper,
                                                            self.parts.schedule)
        self.progress = Progress(epochs=cfg.train.epochs,
                                 total_rounds=cfg.train.epochs * self.schedule.rounds_per_epoch, restarts=restarts)
        # a resumed job continues from its checkpoint, not from model.init_from
        self._state, self.history, counters = self._starting_point(resume)
        if resume:
            version = self._state.version
            self.progress.counters = counters
            self.progress.round, self.progress.epoch = version, version // self.schedule.rounds_per_epoch
        self._checkpointed = resume  # this job's checkpoint is in its folder (a resumed one's, from the start)
        self._loop: RoundLoop | None = None
        self.pool_factory = pool_factory or local_pool
        self.pool: Pool | None = None
        self.stop_requested = False
        self.target_reached = False  # objective.target_return: an epoch's evaluation return reached it
        self._diag: dict[str, list[float]] = {c: [] for c in DIAGNOSTIC_COLUMNS}  # this epoch's stochastic rounds

    @property
    def state(self) -> HybridState:
        """The parameters and gradient with every decision so far applied (the round loop's, while it runs).
        Read it from the job's own thread only (on_round, on_epoch): reading it applies a pending decision."""
        return self._state if self._loop is None else self._loop.state

    def stop(self) -> None:
        self.stop_requested = True

    def run(self, on_round: Callable[[RoundEvent, Progress], None] | None = None,
            on_epoch: Callable[[HistoryRow], None] | None = None) -> JobResult:
        """Train to the end (or to a stop), write the outputs, return the result document.

        A divergence (nan or inf) or an OS error (a full disk) ends the job FAILED: result.json says why,
        error.log holds the traceback, and no model is written."""
        try:
            write_json(self.out / "config.json", self.cfg.model_dump())
            return self._run(on_round, on_epoch)
        except (Diverged, OSError) as err:
            p = self.progress
            p.status, p.message = JobStatus.FAILED, failure_message(err, self.cfg, p.total_rounds)
            log.info("job %s failed: %s", self.cfg.name, p.message)
            return failed_result(self.cfg, p, self.model.num_parameters, self.out, traceback.format_exc())

    def _run(self, on_round: Callable[[RoundEvent, Progress], None] | None,
             on_epoch: Callable[[HistoryRow], None] | None) -> JobResult:
        p, c = self.progress, self.progress.counters
        p.status, started = JobStatus.RUNNING, time.perf_counter()
        seconds_before = c.seconds["total"]
        pool = self.pool = self.pool_factory(self.cfg, self.parts, c)
        loop = self._loop = self._round_loop(pool)
        try:
            while True:
                try:
                    self._rounds(loop, on_round, on_epoch, seconds_before, started)
                    loop.flush()
                    self._state = loop.state  # localsgd's last gather may have moved it; allreduce may read it
                    break
                except ReplicasLost as err:  # allreduce: the state is gone with its replicas
                    loop = self._loop = self._rewind(pool, err)
        finally:
            try:
                with contextlib.suppress(ReplicasLost):  # a failed job: its state as far as it can be read
                    self._state = loop.state
            finally:
                self._loop = None
                pool.close()
        c.seconds["total"] = seconds_before + time.perf_counter() - started
        p.status = JobStatus.STOPPED if p.round < p.total_rounds and not self.target_reached else JobStatus.SUCCEEDED
        stopped = p.status == JobStatus.STOPPED
        ended = f"stopped after round {p.round} of {p.total_rounds}" if stopped else c.workers_note
        if self.target_reached:
            ended = "; ".join(m for m in (f"reached objective.target_return in round {p.round}", ended) if m)
        p.message = "; ".join(m for m in (ended, c.rewinds_note, restarts_note(p.restarts)) if m)
        return self._finish()

    def _round_loop(self, pool: Pool) -> RoundLoop:
        return RoundLoop(self._state, self.hyper, self.schedule, self.cfg.hybrid.mode, self.cfg.hybrid.combine, pool,
                         self.progress.counters, self.cfg.hybrid.replica_check_every)

    def _rounds(self, loop: RoundLoop, on_round: Callable[[RoundEvent, Progress], None] | None,
                on_epoch: Callable[[HistoryRow], None] | None, seconds_before: float, started: float) -> None:
        """The rounds from the state's version to the end, or to a stop or the objective's target."""
        p, c = self.progress, self.progress.counters
        rpe, every = self.schedule.rounds_per_epoch, self.cfg.train.checkpoint_every
        for t in range(self.state.version, p.total_rounds):
            if self.stop_requested or self.target_reached:
                break
            diagnose = self.cfg.hybrid.diagnostics and self.schedule.kind(t) == RoundKind.STOCHASTIC
            before = self.state.theta.clone() if diagnose else None
            event = loop.run_round(t)  # self.state is read only where needed: reading it applies the
            p.round, p.epoch = t + 1, (t + 1) // rpe  # round's decision, which Ray rounds overlap
            if before is not None:
                self._diagnose(t, before, event.improvements, loop.pool.n_workers)
            c.seconds["total"] = seconds_before + time.perf_counter() - started
            if math.isfinite(event.loss) and self.hyper.objective is not None:
                p.latest["trial_return"] = -event.loss  # the best trial's mean return (its cost is minus it)
            elif math.isfinite(event.loss):
                p.latest["batch_loss"] = event.loss
            if (t + 1) % rpe == 0:
                row = self._end_epoch(p.epoch, t + 1)
                if on_epoch:
                    on_epoch(row)
            elif every and (t + 1) % every == 0:
                require_finite_parameters(self.state.theta, t + 1)  # the last checkpoint stays finite
                self._checkpoint()
            if on_round:
                on_round(event, p)

    def _rewind(self, pool: Pool, err: ReplicasLost) -> RoundLoop:
        """allreduce, every replica lost at once: back to this job's last checkpoint (or its start), a new round
        loop from there; the workers are given that state and redo the rounds since, bitwise as they were."""
        p, c = self.progress, self.progress.counters
        state, rows, then = self._starting_point(self._checkpointed)
        version = state.version
        tries = sum(back == version for _, back in c.rewinds)  # a job that gets no further than its checkpoint
        if tries >= MAX_REWINDS:
            raise RuntimeError(f"{err}; the job was rewound to round {version} {tries} times already (at most "
                               f"{MAX_REWINDS}); `hes train --resume` continues it from its last checkpoint")
        log.warning("job %s: %s; rewound to round %d", self.cfg.name, err, version)
        c.rewind_to(then, p.round, version)
        self.history = rows
        p.round, p.epoch = version, version // self.schedule.rounds_per_epoch
        self.target_reached = False
        for values in self._diag.values():
            values.clear()
        self._state = state
        return self._round_loop(pool)

    def _starting_point(self, saved: bool) -> tuple[HybridState, list[HistoryRow], Counters]:
        """The state a run starts from, with the history rows and counters that go with it: the folder's checkpoint
        when `saved`, else the job's initial parameters (model.init_from or the seed)."""
        if not saved:
            return HybridState(0, torch.from_numpy(initial_theta(self.cfg, self.model)), None), [], Counters()
        theta, grad, meta = load_checkpoint(self.out)
        history = tuple(torch.from_numpy(h) for h in load_history(self.out))
        obs = None if meta.obs is None else np.array(meta.obs, dtype=np.float64)
        state = HybridState(meta.version, torch.from_numpy(theta), None if grad is None else torch.from_numpy(grad),
                            history, obs)
        return state, meta.history, meta.counters

    def _end_epoch(self, epoch: int, rounds_done: int) -> HistoryRow:
        theta = self.state.theta  # applies the epoch's last decision (not evaluation time)
        require_finite_parameters(theta, rounds_done)  # before the checkpoint: the last one stays finite
        t0 = time.perf_counter()
        scores = self._scores(theta, rounds_done)
        c = self.progress.counters
        c.seconds["evaluation"] += time.perf_counter() - t0
        b = c.bytes_doc()
        diag: dict[str, float] = {}
        if self.cfg.hybrid.diagnostics:  # means over the epoch's stochastic rounds; NaN when it had none
            for column, values in self._diag.items():
                diag[column] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
                values.clear()
        row = HistoryRow(
            epoch=epoch, round=rounds_done, rounds_full=c.rounds["full"], rounds_stochastic=c.rounds["stochastic"],
            bytes_full_up=b["full"]["up"], bytes_full_down=b["full"]["down"], bytes_stochastic_up=b["stochastic"]["up"],
            bytes_stochastic_down=b["stochastic"]["down"], bytes_sync=b["sync"], bytes_total=b["total"],
            improvements=c.improvements, seconds=round(c.seconds["total"], 4), diag_cosine=diag.get("diag_cosine"),
            diag_beat_share=diag.get("diag_beat_share"), **scores)
        self.history.append(row)
        self.progress.latest.update({k: v for k, v in scores.items() if v is not None})  # mse: no accuracy
        if "return_mean" in scores:
            self.progress.latest["return"] = scores["return_mean"]
            target = self.cfg.objective.target_return if self.cfg.objective else None
            self.target_reached = target is not None and scores["return_mean"] >= target
        self._checkpoint()
        write_history(self.out / "history.csv", self.history, self._history_extra)
        return row

    def _scores(self, theta: torch.Tensor, rounds_done: int) -> dict[str, Any]:
        """An epoch's evaluation: losses and accuracies on train and dev, or a black-box job's evaluation
        return over its fixed episodes (and the episodes its trials played so far)."""
        if self.hyper.objective is not None:
            ret, spread = evaluate_return(self.model, theta, self.hyper.objective, self.state.obs)
            require_finite(ret, rounds_done, "the evaluation return")
            return {"return_mean": ret, "return_std": spread, "episodes": self.progress.counters.episodes}
        train_loss, train_acc = evaluate(self.model, theta, self.data.x_train, self.data.y_train)
        require_finite(train_loss, rounds_done, "the training loss")
        dev_loss, dev_acc = evaluate(self.model, theta, self.data.x_dev, self.data.y_dev)
        return {"train_loss": train_loss, "train_accuracy": train_acc, "dev_loss": dev_loss, "dev_accuracy": dev_acc}

    @property
    def _history_extra(self) -> list[str]:
        if self.hyper.objective is not None:
            return RETURN_COLUMNS
        return DIAGNOSTIC_COLUMNS if self.cfg.hybrid.diagnostics else []

    def round_examples(self, t: int) -> np.ndarray:
        """The training-set indices of round t's minibatch, every worker's share (dirichlet: from each partition)."""
        if self.parts.partitions is None:
            return self.schedule.batch(t)
        return np.concatenate([part[self.schedule.own(t, w)] for w, part in enumerate(self.parts.partitions)])

    def _diagnose(self, t: int, before: torch.Tensor, improvements: int, workers: int) -> None:
        """hybrid.diagnostics, one stochastic round: one backprop on its minibatch at the parameters it started from.
        cosine: between the step applied and the descent direction -g (the trainable part of g); beat share: the
        round's trials that beat the unperturbed step (NaN when it ran none: stale)."""
        idx = torch.tensor(self.round_examples(t))
        x, y = torch.from_numpy(self.data.x_train)[idx], torch.from_numpy(self.data.y_train)[idx]
        grad = batch_loss_and_grad_sum(self.model, before, x, y)[1] / len(idx)
        grad = keep_frozen(grad, torch.zeros_like(grad), self.hyper)  # a frozen parameter cannot move
        step = self.state.theta - before
        norms = float(step.norm()) * float(grad.norm())
        self._diag["diag_cosine"].append(float(-(step @ grad)) / norms if norms > 0 else math.nan)
        trials = workers * worker_k(self.cfg)
        self._diag["diag_beat_share"].append(improvements / trials if trials else math.nan)

    def _final_scores(self, theta: torch.Tensor, rounds_done: int) -> FinalMetrics:
        """result.json's `final`: accuracies and losses on train, dev and test; a black-box job's evaluation
        return (mean and standard deviation) with those null, as it has no data set."""
        if self.hyper.objective is not None:
            ret, spread = evaluate_return(self.model, theta, self.hyper.objective, self.state.obs)
            require_finite(ret, rounds_done, "the evaluation return")
            return FinalMetrics(train_accuracy=None, dev_accuracy=None, test_accuracy=None, train_loss=None,
                                dev_loss=None, return_std=spread, **{"return": ret})
        train_loss, train_acc = evaluate(self.model, theta, self.data.x_train, self.data.y_train)
        require_finite(train_loss, rounds_done, "the training loss")
        dev_loss, dev_acc = evaluate(self.model, theta, self.data.x_dev, self.data.y_dev)
        test_loss, test_acc = evaluate(self.model, theta, self.data.x_test, self.data.y_test)
        return FinalMetrics(train_accuracy=train_acc, train_loss=train_loss, dev_accuracy=dev_acc, dev_loss=dev_loss,
                            test_accuracy=test_acc, test_loss=test_loss)

    def _checkpoint(self) -> None:
        grad = None if self.state.grad is None else self.state.grad.cpu().numpy()
        obs = None if self.state.obs is None else self.state.obs.tolist()
        meta = CheckpointMeta(self.state.version, self.history, self.progress.counters, obs)
        save_checkpoint(self.out, self.state.theta.cpu().numpy(), grad, meta,
                        tuple(h.cpu().numpy() for h in self.state.history))
        self._checkpointed = True  # the folder's checkpoint is this job's from here on (a rewind goes back to it)

    def _finish(self) -> JobResult:
        p, c, theta = self.progress, self.progress.counters, self.state.theta
        require_finite_parameters(theta, p.round)  # a diverged job writes no model
        final = self._final_scores(theta, p.round)
        result = JobResult(
            status=p.status, message=p.message, config=self.cfg.model_dump(), num_parameters=self.model.num_parameters,
            num_workers=self.cfg.cluster.workers, final=final, rounds=RoundCounts(**c.rounds),
            bytes=ByteCounts.model_validate(c.bytes_doc()), seconds=Seconds(**c.seconds),
            replica_checks=replica_checks(c), improvements=c.improvements,
            stale_results_dropped=c.stale_results_dropped, worker_failures=c.worker_failures, restarts=p.restarts,
            episodes=c.episodes if self.hyper.objective is not None else None)
        self._checkpoint()
        write_history(self.out / "history.csv", self.history, self._history_extra)
        named = {k: v.detach().cpu().numpy() for k, v in self.model.unflatten(theta).items()}
        write_model(self.out / "model.safetensors", named,
                    {"arch": self.model.arch, "activation": self.model.activation, "job": self.cfg.name})
        write_json(self.out / "result.json", result.model_dump(mode="json"))
        return result


def local_pool(cfg: JobConfig, parts: JobParts, counters: Counters) -> Pool:
    """The in-process pool: one replica sharing the coordinator's state (workers: 0), or, with cluster.backend
    local, the N replicas of a Ray job run here one after another (coordinator/pool.py ReplicaPool)."""
    if cfg.cluster.backend == "local" and cfg.cluster.workers >= 1:
        n = cfg.cluster.workers
        # dataset stays 0: the replicas read the data where it was loaded, as Ray workers that can read it on their
        # node do (coordinator/ship_data.py)
        return ReplicaPool([make_replica(cfg, parts, i) for i in range(n)],
                           threads=max(1, int(cfg.cluster.cpus_per_worker)))
    # one worker, the only one (whatever cluster.workers says when a caller runs a Ray config in process)
    if parts.partitions is not None and len(parts.partitions) > 1:
        raise ValueError(f"data.split: dirichlet places the data on {len(parts.partitions)} workers; run them on "
                         "Ray or with cluster.backend local, not as one replica in this process")
    return LocalPool(make_replica(cfg, parts, 0, 1), shares_state=cfg.hybrid.mode != "localsgd")


def make_replica(cfg: JobConfig, parts: JobParts, worker: int, n_workers: int | None = None) -> Replica:
    """Worker `worker`'s replica as a worker actor makes it: its data, at version 0 from the seed's parameters
    (with model.init_from it has none yet: its first round asks for a sync, counted as sync bytes)."""
    x, y = parts.worker_data(worker)
    replica = Replica(parts.model, x, y, parts.hyper, parts.schedule, cfg.seed, worker_k(cfg), cfg.hybrid.combine,
                      worker, n_workers or max(1, cfg.cluster.workers))
    if cfg.model.init_from is None:
        replica.start(parts.model.initial_parameters(cfg.seed))
    return replica
