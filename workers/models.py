"""The paper's networks as pure functions of ONE flat float32 parameter vector.

A `Model` lays its tensors out in that vector with every weight tensor first and every bias after, so
that "the weights" (what Hybrid-ES perturbs; biases are not, see seed/NOTES.md) is the prefix
`theta[:num_weights]` and one seed defines a perturbation of the whole model.
MLP 784-300-10: 784*300 + 300*10 weights = 238,200, + 310 biases = 238,510 parameters.

`forward_trials` evaluates T low-rank trials W_t = W - c * A_t B_t^T of every weight matrix at once, as one
tensor (T, batch, features) through the layers: x W_t^T = x W^T - c * (x B_t) A_t^T, so the first layer's
product with the shared input is computed once, and every later layer's base product is one matrix product
over all trials (a conv kernel is the matrix out x in*kh*kw; its correction is a conv with the rank-r kernels
B_t, grouped over the trials, then a 1x1 mix with A_t).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from workers.losses import CROSS_ENTROPY, Loss

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
}
# The same, in place: the batched trials' (T, n, features) activations are fresh tensors, overwritten, not copied.
ACTIVATIONS_IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "relu": torch.relu_,
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
    loss: Loss = CROSS_ENTROPY  # config train.loss (workers/losses.py)

    @property
    def num_weights(self) -> int:
        return sum(math.prod(t.shape) for t in self.weights)

    @property
    def num_parameters(self) -> int:
        return self.num_weights + sum(math.prod(t.shape) for t in self.biases)

    @property
    def batches_trials(self) -> bool:
        """Whether the engine evaluates a round's low-rank trials in one `forward_trials` (the MLP), or one
        dense forward at a time (the ConvNet). Batching shares the first layer's product among the trials and
        adds a correction per trial; that pays only where the first layer is most of the forward, so each
        architecture takes the way that measured faster (BENCHMARKS.md, "Fast trials")."""
        return self.arch == "mlp"

    @property
    def matrices(self) -> tuple[tuple[int, int], ...]:
        """Every weight tensor as a matrix (rows, cols): a conv kernel (out, in, kh, kw) is out x in*kh*kw."""
        return tuple((t.shape[0], math.prod(t.shape[1:])) for t in self.weights)

    @property
    def gaussian_tensors(self) -> tuple[int, ...]:
        """Indices of the weight tensors that lowrank trials perturb with Gaussian noise (not a Linear or conv
        weight: an embedding, a norm's gain); none in the paper's networks."""
        return ()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of theta, one per named tensor (no copies)."""
        return self.unflatten_parts(theta[:self.num_weights], theta[self.num_weights:])

    def unflatten_parts(self, weights: torch.Tensor, biases: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of the weight prefix and the biases, held in two vectors (a trial's weights in a buffer of
        their own, the biases shared by every trial)."""
        out = {}
        for part, tensors in ((weights, self.weights), (biases, self.biases)):
            at = 0
            for t in tensors:
                n = math.prod(t.shape)
                out[t.name] = part[at:at + n].view(t.shape)
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
        return self.forward_parts(theta[:self.num_weights], theta[self.num_weights:], x)

    def forward_parts(self, weights: torch.Tensor, biases: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`forward` with the weight prefix and the biases in two vectors; the same arithmetic, to the bit."""
        p = self.unflatten_parts(weights, biases)
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

    def forward_trials(self, theta: torch.Tensor, x: torch.Tensor, factors: list[tuple[torch.Tensor, torch.Tensor]],
                       c: float) -> torch.Tensor:
        """Logits (T, n, 10) of T low-rank trials around theta for images x (n, 1, side, side).

        factors[i] = (A (T, rows, r), B (T, cols, r)) of weight matrix i (`matrices`); trial t's weights are
        W_i - c * A_t B_t^T (its biases are theta's). A trial with zero factors is theta itself. Inference only
        (activations are applied in place)."""
        p = self.unflatten(theta)
        act = ACTIVATIONS_IN_PLACE[self.activation]
        n, t = len(x), factors[0][0].shape[0]
        if self.arch == "mlp":
            h = _lowrank_linear(x.reshape(n, -1), p["w0"], p["b0"], *factors[0], c)
            for i in range(1, len(self.weights)):
                h = _lowrank_linear(act(h), p[f"w{i}"], p[f"b{i}"], *factors[i], c)
            return h
        h = _lowrank_conv(x, p["conv1.w"], p["conv1.b"], *factors[0], c)  # (T, n, 6, 24, 24)
        h = F.max_pool2d(act(h.flatten(0, 1)), 2)
        h = _lowrank_conv(h.unflatten(0, (t, n)), p["conv2.w"], p["conv2.b"], *factors[1], c)
        h = F.max_pool2d(act(h.flatten(0, 1)), 2).reshape(t, n, -1)
        h = act(_lowrank_linear(h, p["fc1.w"], p["fc1.b"], *factors[2], c))
        h = act(_lowrank_linear(h, p["fc2.w"], p["fc2.b"], *factors[3], c))
        return _lowrank_linear(h, p["fc3.w"], p["fc3.b"], *factors[4], c)


def _lowrank_linear(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    c: float) -> torch.Tensor:
    """h (W - c A_t B_t^T)^T + bias for every trial t: (T, n, out). h is (n, in), shared by the trials (one
    product with W, one with all the B_t side by side), or (T, n, in), one row block per trial."""
    t, cols, r = b.shape
    out = F.linear(h, w, bias)  # (n, out) or (T, n, out): one matrix product either way
    if h.dim() == 2:
        hb = (h @ b.permute(1, 0, 2).reshape(cols, t * r)).view(len(h), t, r).transpose(0, 1)  # (T, n, r)
    else:
        hb = torch.bmm(h, b)
    return torch.baddbmm(out, hb, a.transpose(1, 2), alpha=-c)  # out - c * hb A^T in one pass


def _lowrank_conv(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  c: float) -> torch.Tensor:
    """conv(h, W - c A_t B_t^T) + bias for every trial t: (T, n, out, H', W'). h is (n, in, H, W), shared,
    or (T, n, in, H, W). The correction convolves with the r kernels B_t (in, kh, kw) of each trial (a grouped
    conv over the trials when their inputs differ) and mixes the r maps with A_t (out x r)."""
    t, _, r = b.shape
    kernels = b.transpose(1, 2).reshape(t * r, *w.shape[1:])  # (T*r, in, kh, kw)
    if h.dim() == 4:
        out = F.conv2d(h, w, bias).unsqueeze(0)  # (1, n, out, H', W'), broadcast over the trials
        maps = F.conv2d(h, kernels)  # (n, T*r, H', W')
    else:
        n = h.shape[1]
        out = F.conv2d(h.flatten(0, 1), w, bias).unflatten(0, (t, n))
        maps = F.conv2d(h.transpose(0, 1).flatten(1, 2), kernels, groups=t)  # (n, T*r, H', W')
    n, _, hh, ww = maps.shape
    maps = maps.view(n, t, r, hh * ww).permute(1, 0, 2, 3)  # (T, n, r, H'W')
    ca = (c * a).unsqueeze(1).unsqueeze(-1)  # (T, 1, out, r, 1)
    mixed = ca[:, :, :, 0] * maps[:, :, 0:1]  # (T, n, out, H'W'), one broadcast product per rank (r is small)
    for j in range(1, r):
        mixed.addcmul_(ca[:, :, :, j], maps[:, :, j:j + 1])
    return mixed.view(t, n, -1, hh, ww).neg_().add_(out)  # out - mixed, in mixed's fresh buffer


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
