"""The paper's networks as pure functions of ONE flat float32 parameter vector.

A `Model` lays its tensors out in that vector with every weight tensor first and every bias after, so
that "the weights" (what Hybrid-ES perturbs; biases are not, see seed/NOTES.md) is the prefix
`theta[:num_weights]` and one seed defines a perturbation of the whole model.
MLP 784-300-10: 784*300 + 300*10 weights = 238,200, + 310 biases = 238,510 parameters.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    fan_in: int


@dataclass(frozen=True)
class Model:
    """A network: its tensors' layout in the flat vector and a forward function over it."""
    arch: str
    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    activation: str
    init: str  # "normal" (N(0,1), the paper's MLP) or "fan_in" (N(0, 1/fan_in))

    @property
    def num_weights(self) -> int:
        return sum(math.prod(t.shape) for t in self.weights)

    @property
    def num_parameters(self) -> int:
        return self.num_weights + sum(math.prod(t.shape) for t in self.biases)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of theta, one per named tensor (no copies)."""
        out, at = {}, 0
        for t in self.weights + self.biases:
            n = math.prod(t.shape)
            out[t.name] = theta[at:at + n].view(t.shape)
            at += n
        return out

    def initial_parameters(self, seed: int) -> np.ndarray:
        """Weights drawn from N(0, 1) (or N(0, 1/fan_in)), biases zero; float32 (P,)."""
        rng = np.random.default_rng(seed)
        theta = np.zeros(self.num_parameters, dtype=np.float32)
        at = 0
        for t in self.weights:
            n = math.prod(t.shape)
            std = 1.0 if self.init == "normal" else 1.0 / math.sqrt(t.fan_in)
            theta[at:at + n] = rng.standard_normal(n, dtype=np.float32) * np.float32(std)
            at += n
        return theta

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, 10) for images x (n, 1, side, side)."""
        p = self.unflatten(theta)
        act = ACTIVATIONS[self.activation]
        if self.arch == "mlp":
            h = x.reshape(len(x), -1)
            n_layers = len(self.weights)
            for i in range(n_layers):
                h = F.linear(h, p[f"w{i}"], p[f"b{i}"])
                if i < n_layers - 1:
                    h = act(h)
            return h
        h = F.max_pool2d(act(F.conv2d(x, p["conv1.w"], p["conv1.b"])), 2)
        h = F.max_pool2d(act(F.conv2d(h, p["conv2.w"], p["conv2.b"])), 2)
        h = act(F.linear(h.reshape(len(h), -1), p["fc1.w"], p["fc1.b"]))
        h = act(F.linear(h, p["fc2.w"], p["fc2.b"]))
        return F.linear(h, p["fc3.w"], p["fc3.b"])


def mlp(inputs: int, hidden: list[int], activation: str = "sigmoid", init: str = "normal",
        classes: int = 10) -> Model:
    sizes = [inputs, *hidden, classes]
    weights = tuple(Tensor(f"w{i}", (sizes[i + 1], sizes[i]), sizes[i]) for i in range(len(sizes) - 1))
    biases = tuple(Tensor(f"b{i}", (sizes[i + 1],), sizes[i]) for i in range(len(sizes) - 1))
    return Model("mlp", weights, biases, activation, init)


def convnet(side: int, activation: str = "tanh", init: str = "fan_in", classes: int = 10) -> Model:
    """The paper's LeNet-like net: conv5x5x6 -> pool2 -> conv5x5x16 -> pool2 -> 120 -> 84 -> 10."""
    s = ((side - 4) // 2 - 4) // 2  # side after two (valid 5x5 conv, 2x2 pool) stages
    if s < 1:
        raise ValueError(f"model.arch: convnet needs images of at least 16x16 pixels, the data has {side}x{side}")
    flat = 16 * s * s  # 16 * 4 * 4 = 256 for MNIST
    weights = (Tensor("conv1.w", (6, 1, 5, 5), 25), Tensor("conv2.w", (16, 6, 5, 5), 150),
               Tensor("fc1.w", (120, flat), flat), Tensor("fc2.w", (84, 120), 120),
               Tensor("fc3.w", (classes, 84), 84))
    biases = (Tensor("conv1.b", (6,), 25), Tensor("conv2.b", (16,), 150), Tensor("fc1.b", (120,), flat),
              Tensor("fc2.b", (84,), 120), Tensor("fc3.b", (classes,), 84))
    return Model("convnet", weights, biases, activation, init)


def build_model(arch: str, hidden: list[int], activation: str, init: str | None, side: int) -> Model:
    """The model a job config names (see coordinator/config.py ModelConfig) for images side x side."""
    if arch == "mlp":
        return mlp(side * side, list(hidden), activation, init or "normal")
    if arch == "convnet":
        return convnet(side, activation, init or "fan_in")
    raise ValueError(f"model.arch: unknown architecture {arch!r}")
