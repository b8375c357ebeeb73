"""Any torch.nn.Module as a `Model`: its parameters laid out in the one flat float32 vector the replicas share.

config: model.arch module, model.factory "package.module:function", model.kwargs (passed to it), model.perturb.

Layout (stable for a given module class and kwargs): first every parameter of two or more dimensions, in the
order of `module.named_parameters()` (registration order; a tied parameter once, under its first name), then
every other parameter (biases, norm gains) in the same order. `perturb: weights` makes the first group the
weight prefix `theta[:num_weights]` (trials perturb it, L2 decays it); `perturb: all` puts every parameter in
the prefix (then L2 decays them all). Lowrank trials perturb a Linear or Conv weight with A B^T / sqrt(rank) and
every other tensor of the prefix with N(0, 1) noise (`gaussian_tensors`).

The forward is `torch.func.functional_call(module, views of theta, (x,))`: the same operations as the module's
own forward, to the bit. The module runs in eval mode (Dropout off); BatchNorm's running statistics, which change
in training, are refused. The module is built by its factory in every process that needs it (under the job seed,
from the model's name and kwargs, not pickled), so the factory must import on every node.
"""
from __future__ import annotations

import functools
import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.factories import FactoryError, load_factory
from workers.losses import Loss
from workers.models import Model, Tensor

FIELD = "model.factory"
_CALLING = threading.Lock()


@dataclass(frozen=True)
class ModuleModel(Model):
    factory: str = ""
    kwargs_json: str = "{}"  # model.kwargs, as JSON with sorted keys (hashable, the cache's key)
    seed: int = 0  # the module is built under this torch seed; its own initial parameters are theta0
    lowrank_free: tuple[int, ...] = ()  # indices into `weights` of the tensors that are no Linear or conv weight

    @property
    def gaussian_tensors(self) -> tuple[int, ...]:
        return self.lowrank_free

    @property
    def matrices(self) -> tuple[tuple[int, int], ...]:
        """Every prefix tensor as (its first dimension, the rest); a scalar parameter is 1 x 1."""
        return tuple((t.shape[0] if t.shape else 1, math.prod(t.shape[1:])) for t in self.weights)

    def module(self, device: torch.device | str = "cpu") -> nn.Module:
        """The module (this process's copy, on `device`); its own parameters are never read in a forward."""
        return _module(self.factory, self.kwargs_json, self.seed, str(device))

    def initial_parameters(self, seed: int) -> np.ndarray:
        """The module's own initial parameters (its factory under torch seed `seed`), in the layout; (P,) float32."""
        module = self.module() if seed == self.seed else _build(self.factory, self.kwargs_json, seed)
        params = dict(module.named_parameters())
        names = [t.name for t in (*self.weights, *self.biases)]
        return torch.cat([params[n].detach().reshape(-1) for n in names]).numpy().astype(np.float32, copy=True)

    def forward_parts(self, weights: torch.Tensor, biases: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = self.unflatten_parts(weights, biases)
        with _CALLING:  # functional_call swaps the module's tensors while it runs: one thread at a time
            out: torch.Tensor = torch.func.functional_call(self.module(weights.device), params, (x,))
        return out

    def forward_trials(self, theta: torch.Tensor, x: torch.Tensor, factors: list[tuple[torch.Tensor, torch.Tensor]],
                       c: float) -> torch.Tensor:
        raise NotImplementedError("a module model evaluates its trials one dense forward at a time")


def _build(factory: str, kwargs_json: str, seed: int) -> nn.Module:
    fn = load_factory(factory, FIELD)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        try:
            module = fn(**json.loads(kwargs_json))
        except Exception as err:  # the factory's own error (a kwarg it does not take, ...), named as the job's
            raise FactoryError(f"{FIELD}: {factory}(**{kwargs_json}) failed: {type(err).__name__}: "
                               f"{str(err)[:500]}") from None
    if not isinstance(module, nn.Module):
        raise FactoryError(f"{FIELD}: {factory} returned a {type(module).__name__}, not a torch.nn.Module")
    check_module(module, factory)
    module.eval()
    module.requires_grad_(False)  # the flat vector is what is trained, through functional_call
    return module


@functools.lru_cache(maxsize=8)
def _module(factory: str, kwargs_json: str, seed: int, device: str) -> nn.Module:
    return _build(factory, kwargs_json, seed).to(device)


def check_module(module: nn.Module, factory: str) -> None:
    """Refuse what the replicas cannot carry: running statistics, lazy or non-float32 parameters."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
            raise FactoryError(
                f"{FIELD}: {factory} has {type(sub).__name__} at {name or '(the root)'!r}, whose running statistics "
                "change in training and are not carried by the replicas; use GroupNorm or LayerNorm instead "
                "(or track_running_stats=False)")
    for name, p in module.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise FactoryError(f"{FIELD}: {factory} has a lazy parameter {name!r}; give its layer its input size")
        if p.dtype != torch.float32:
            raise FactoryError(f"{FIELD}: parameter {name!r} of {factory} is {p.dtype}; the flat vector is "
                               "float32 (return module.float())")
    if not any(True for _ in module.parameters()):
        raise FactoryError(f"{FIELD}: {factory} returned a module without parameters")


def module_model(factory: str, kwargs: dict[str, Any], perturb: str = "weights", loss: Loss | None = None,
                 seed: int = 0) -> ModuleModel:
    """The Model of a module factory (config model.factory, model.kwargs, model.perturb, train.loss)."""
    try:
        kwargs_json = json.dumps(kwargs, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise FactoryError(f"model.kwargs: not plain data ({err})") from None
    module = _module(factory, kwargs_json, seed, "cpu")
    lowrank = {id(sub.weight) for sub in module.modules()
               if isinstance(sub, nn.Linear | nn.modules.conv._ConvNd) and isinstance(sub.weight, nn.Parameter)}
    params = list(module.named_parameters())
    matrices = [(n, p) for n, p in params if p.dim() >= 2]
    rest = [(n, p) for n, p in params if p.dim() < 2]
    weights, biases = (matrices + rest, []) if perturb == "all" else (matrices, rest)

    def tensor(name: str, p: torch.Tensor) -> Tensor:
        return Tensor(name, tuple(p.shape), max(1, math.prod(p.shape[1:])))

    return ModuleModel(
        "module", tuple(tensor(n, p) for n, p in weights), tuple(tensor(n, p) for n, p in biases), "", "module",
        loss or Loss(), factory, kwargs_json, seed,
        tuple(i for i, (_, p) in enumerate(weights) if id(p) not in lowrank))
