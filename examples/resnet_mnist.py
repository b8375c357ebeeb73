"""A small residual ConvNet with GroupNorm on MNIST (28 x 28 digits, read from $HES_MNIST_DIR or data.path).

    HES_MNIST_DIR=/path/to/mnist hes train --config examples/resnet_mnist.yaml

GroupNorm, not BatchNorm: BatchNorm keeps running statistics that change in training, which the replicas do not
carry (a module with it is refused). Without $HES_MNIST_DIR (or data.path) the job stops before its first round,
saying so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """x + conv(relu(gn(conv(relu(gn(x)))))) (pre-activation), or with a strided 1x1 shortcut when it downsamples."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class ResNet(nn.Module):
    def __init__(self, channels: int = 8, groups: int = 4, classes: int = 10) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Conv2d(1, c, 3, 2, 1, bias=False)  # 28 x 28 -> 14 x 14
        self.blocks = nn.Sequential(Block(c, c, 1, groups), Block(c, 2 * c, 2, groups),  # 7 x 7
                                    Block(2 * c, 4 * c, 2, groups))  # 4 x 4
        self.norm = nn.GroupNorm(groups, 4 * c)
        self.head = nn.Linear(4 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.blocks(self.stem(x))))
        return self.head(h.mean((2, 3)))  # global average pool, then the logits (n, classes)


def resnet(channels: int = 8, groups: int = 4, classes: int = 10) -> nn.Module:
    """model.factory: a strided stem, three pre-activation residual blocks (14 -> 7 -> 4), pooled logits."""
    return ResNet(channels, groups, classes)
