"""Non-IID placement of the training set (`data.split: dirichlet`): which examples each worker slot owns.

The per-class Dirichlet partition of the federated-learning literature (Hsu et al. 2019, "Measuring the effects
of non-identical data distribution"): for every class c, the shares p_c ~ Dirichlet(alpha * 1_N) of its examples
go to the N worker slots, each class's examples shuffled first; a small alpha gives each slot a few dominant labels.
Seeded by the job seed alone, so every process derives the same partition.

Every slot gets at least one example: a slot left empty by the draw takes one example from the largest partition
(the last of it), repeated until none is empty; this needs n >= N examples and changes the draw only where it
would have left a worker with nothing to train on.

A worker slot takes its share of every round's examples (the minibatch split as `np.array_split` splits it among
the N slots) from its own partition, walking it in a seeded order pass after pass (`share`): a slot whose
partition is smaller than its share of an epoch sees its examples several times an epoch, a larger one not all
of them. Slots are fixed: when a worker is missing (it left the job), its partition's examples are skipped for
those rounds and the round's minibatch is that much smaller; the others keep their own shares.
"""
from __future__ import annotations

import functools

import numpy as np


def dirichlet_partition(labels: np.ndarray, n_workers: int, alpha: float, seed: int) -> tuple[np.ndarray, ...]:
    """The training-set indices each of `n_workers` slots owns (sorted): disjoint, covering every example once."""
    if n_workers < 1:
        raise ValueError(f"cluster.workers: a partition needs at least one worker, not {n_workers}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"data.split: dirichlet splits by class label, and these targets are {labels.dtype} of shape "
                         f"{tuple(labels.shape[1:]) or 'scalar'} per example, not one integer label")
    if len(labels) < n_workers:
        raise ValueError(f"data.split: {len(labels)} training examples cannot give each of {n_workers} workers one")
    rng = np.random.default_rng((seed, 0x0D1C))  # its own stream: the data split and the trials draw elsewhere
    parts: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(n_workers, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for w, piece in enumerate(np.split(idx, cuts)):
            parts[w].append(piece)
    out = [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]
    while True:  # no slot without an example (see the module's docstring)
        empty = [w for w, p in enumerate(out) if len(p) == 0]
        if not empty:
            break
        big = max(range(n_workers), key=lambda w: (len(out[w]), -w))
        out[empty[0]], out[big] = out[big][-1:], out[big][:-1]
    return tuple(p.astype(np.int64) for p in out)


def share_sizes(batch_size: int, n_workers: int) -> tuple[int, ...]:
    """Each slot's examples per round: the minibatch split as np.array_split splits it."""
    base, extra = divmod(batch_size, n_workers)
    return tuple(base + (1 if w < extra else 0) for w in range(n_workers))


def share(part_size: int, share_size: int, step: int, worker: int, seed: int, shuffle: bool) -> np.ndarray:
    """Positions in a slot's partition (0 .. part_size - 1) of its examples at batch step `step`: positions
    step * share_size .. of the slot's stream, the partition walked in a seeded order (or in order, no shuffle),
    a new order every pass."""
    lo = step * share_size
    pos = np.arange(lo, lo + share_size, dtype=np.int64)
    passes, at = np.divmod(pos, part_size)
    if not shuffle:
        return at
    out = np.empty_like(pos)
    for p in np.unique(passes):
        sel = passes == p
        out[sel] = _pass_order(seed, worker, int(p), part_size)[at[sel]]
    return out


@functools.lru_cache(maxsize=64)  # the pass running of each slot (and the next)
def _pass_order(seed: int, worker: int, p: int, n: int) -> np.ndarray:
    order = np.random.default_rng((seed, 0x5A4D, worker, p)).permutation(n)
    order.flags.writeable = False
    return order


def label_skew(labels: np.ndarray, parts: tuple[np.ndarray, ...], classes: int = 10) -> float:
    """Mean total-variation distance between each slot's label distribution and the whole set's (0: IID)."""
    whole = np.bincount(labels, minlength=classes) / len(labels)
    tv = [0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - whole).sum() for p in parts]
    return float(np.mean(tv))
