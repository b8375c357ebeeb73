"""The training loss of a job (config `train.loss`), per example, so that every sum and mean agrees.

cross_entropy: logits (n, C) against class labels (n,), or a sequence's logits (n, T, C) against (n, T); an
    example's loss is its mean over the T positions, so the batch-mean gradient does not grow with T.
mse: outputs against float targets of the same number of entries; an example's loss is the mean of its squared
    errors. A regression job has no accuracy.
A batch's "sum" is the sum of its examples' losses (full rounds send its gradient), its "mean" their mean (what a
trial's cost is). For logits (n, C) the calls are the ones the paper's networks always made, to the bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class Loss:
    name: str = "cross_entropy"

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"train.loss: unknown loss {self.name!r} ({', '.join(LOSSES)})")

    @property
    def classification(self) -> bool:
        """Whether the job has an accuracy (cross_entropy) or only a loss (mse)."""
        return self.name == "cross_entropy"

    @property
    def label(self) -> str:
        return "cross-entropy" if self.classification else "mean squared error"

    def total(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the examples' losses (a scalar)."""
        if self.classification:
            if out.dim() == 2:
                return F.cross_entropy(out, y, reduction="sum")
            return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="sum") / y[0].numel()
        return F.mse_loss(_like(out, y), y, reduction="sum") / y[0].numel()

    def mean(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean of the examples' losses (a scalar)."""
        if self.classification:
            return F.cross_entropy(out if out.dim() == 2 else out.flatten(0, -2), y.flatten())
        return F.mse_loss(_like(out, y), y)

    def trial_means(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(T,) the mean loss of each of T trials' outputs (T, n, ...) on one batch y (n, ...)."""
        t, n = out.shape[:2]
        if self.classification and out.dim() == 3:
            return F.cross_entropy(out.reshape(t * n, -1), y.repeat(t), reduction="none").view(t, n).mean(1)
        return torch.stack([self.mean(out[i], y) for i in range(t)])

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(labels predicted right, labels): per position for sequences; (0, 0) for a regression."""
        if not self.classification:
            return 0, 0
        return int((out.argmax(-1) == y).sum()), y.numel()


def _like(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The outputs in the targets' shape: (n, 1) against (n,) is one value per example either way."""
    return out if out.shape == y.shape else out.reshape(y.shape)


CROSS_ENTROPY = Loss("cross_entropy")
