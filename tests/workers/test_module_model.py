"""A job's own torch.nn.Module as a Model: its forward over the flat vector is the module's own, to the bit; the
layout is stable and documented; what the replicas cannot carry is refused; both noise families apply."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workers.factories import FactoryError, factory_allowed
from workers.hybrid import apply_decision, batch_loss_and_grad_sum, run_trials
from workers.losses import Loss
from workers.module_model import module_model
from workers.noise import perturbation
from workers.state import HybridState, Hyper
from workers.steps import noise, noise_spec


class Mixed(nn.Module):
    """Every kind of tensor: a conv and a linear weight, an embedding, a norm's gain, biases, a 1-D parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.conv = nn.Conv2d(1, 3, 3)
        self.norm = nn.GroupNorm(1, 3)
        self.fc = nn.Linear(3 * 6 * 6, 4)
        self.table = nn.Embedding(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x)) * self.scale.view(1, 3, 1, 1)
        return self.fc(h.flatten(1)) + self.table.weight.sum(0)


def mixed() -> nn.Module:
    return Mixed()


def with_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2)), nn.Flatten(), nn.Linear(72, 3))


FACTORIES = {"mixed": f"{__name__}:mixed", "tabular": "examples.tabular:mlp", "resnet": "examples.resnet_mnist:resnet",
             "charlm": "examples.charlm:transformer"}
INPUTS = {"mixed": lambda: torch.randn(5, 1, 8, 8), "tabular": lambda: torch.randn(7, 30),
          "resnet": lambda: torch.randn(3, 1, 28, 28), "charlm": lambda: torch.randint(0, 128, (2, 64))}


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("perturb", ["weights", "all"])
def test_the_forward_over_the_flat_vector_is_the_modules_own_to_the_bit(name: str, perturb: str) -> None:
    model = module_model(FACTORIES[name], {}, perturb, seed=11)
    theta = torch.from_numpy(model.initial_parameters(11))
    x = INPUTS[name]()
    with torch.no_grad():
        own = model.module()(x)  # the module holds its own initial parameters, theta's values
        assert torch.equal(model.forward(theta, x), own)
        moved = theta + 0.01 * torch.from_numpy(perturbation(3, model.num_parameters))
        module = model.module()
        copy = {n: p.clone() for n, p in module.named_parameters()}
        try:
            for n, v in model.unflatten(moved).items():
                module.get_parameter(n).copy_(v)
            assert torch.equal(model.forward(moved, x), module(x))
        finally:
            for n, v in copy.items():
                module.get_parameter(n).copy_(v)


def test_the_layout_puts_every_matrix_first_in_registration_order() -> None:
    model = module_model(FACTORIES["mixed"], {}, "weights", seed=0)
    assert [t.name for t in model.weights] == ["conv.weight", "fc.weight", "table.weight"]
    assert [t.name for t in model.biases] == ["scale", "conv.bias", "norm.weight", "norm.bias", "fc.bias"]
    assert model.num_weights == 27 + 108 * 4 + 20 and model.num_parameters == model.num_weights + 3 + 3 + 3 + 3 + 4
    every = module_model(FACTORIES["mixed"], {}, "all", seed=0)
    assert [t.name for t in every.weights] == [t.name for t in model.weights + model.biases] and not every.biases
    assert every.num_weights == every.num_parameters
    again = module_model(FACTORIES["mixed"], {}, "weights", seed=0)
    assert again.weights == model.weights and np.array_equal(again.initial_parameters(0), model.initial_parameters(0))
    assert not np.array_equal(model.initial_parameters(1), model.initial_parameters(0))  # seeded by the job


def test_lowrank_on_linear_and_conv_weights_gaussian_on_the_rest() -> None:
    model = module_model(FACTORIES["mixed"], {}, "all", seed=0)
    assert model.gaussian_tensors == (2, 3, 4, 5, 6, 7)  # table.weight, then every 1-D tensor
    spec = noise_spec(model, "lowrank", 2)
    hyper = Hyper(0.1, 0.0, 1.0, 10, model.num_weights, spec)
    z = noise(7, hyper, torch.device("cpu"))
    assert z.shape == (model.num_parameters,)
    stream = perturbation(7, spec.draws)
    lowrank_draws = (3 + 9) * 2 + (4 + 108) * 2
    assert np.array_equal(z[27 + 432:].numpy(), stream[lowrank_draws:])  # the Gaussian tensors take the stream as is
    conv = z[:27].view(3, 9)
    assert torch.linalg.matrix_rank(conv) <= 2  # a conv kernel's perturbation has rank 2
    charlm = module_model(FACTORIES["charlm"], {}, "weights", seed=0)
    assert [charlm.weights[i].name for i in charlm.gaussian_tensors] == ["position", "embed.weight"]


def test_running_statistics_are_refused_naming_the_module_and_the_alternative() -> None:
    with pytest.raises(FactoryError, match=r"model\.factory: .*BatchNorm2d at '1\.0'.*GroupNorm or LayerNorm"):
        module_model(f"{__name__}:with_batchnorm", {}, seed=0)
    with pytest.raises(FactoryError, match=r"model\.factory: cannot import 'no_such_package_x\.models'"):
        module_model("no_such_package_x.models:net", {}, seed=0)
    with pytest.raises(FactoryError, match=r"model\.factory: .*mixed\(\*\*\{\"width\": 3\}\) failed: TypeError"):
        module_model(FACTORIES["mixed"], {"width": 3}, seed=0)


def test_the_allow_list_reads_the_name_only() -> None:
    assert factory_allowed("examples.tabular:mlp", ["examples"])
    assert factory_allowed("examples:f", ["examples"])
    assert not factory_allowed("examples_evil.x:f", ["examples"])
    assert not factory_allowed("os:system", ["examples"])
    assert not factory_allowed("examples.tabular:mlp; import os", ["examples"])


@pytest.mark.parametrize("family", ["gaussian", "lowrank"])
def test_a_round_of_trials_and_its_decision_agree(family: str) -> None:
    """The best trial's seed rebuilds parameters whose cost is bitwise the cost the trial reported."""
    from workers.state import Decision, DecisionKind

    model = module_model(FACTORIES["mixed"], {}, "all", seed=0)
    hyper = Hyper(0.1, 1e-4, 1.0, 6, model.num_weights, noise_spec(model, family, 2))
    theta = torch.from_numpy(model.initial_parameters(0))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    _, grad_sum = batch_loss_and_grad_sum(model, theta, x, y)
    state = HybridState(1, theta, grad_sum / 6)
    out = run_trials(model, state, [11, 12, 13], x, y, hyper)
    rebuilt = apply_decision(state, Decision(1, DecisionKind.SEED, seed=out.seed), hyper)
    assert np.float32(Loss().mean(model.forward(rebuilt.theta, x), y).item()) == np.float32(out.cost)


def test_sequence_cross_entropy_and_mse_are_means_per_example() -> None:
    logits, y = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    ce = Loss("cross_entropy")
    per_example = torch.stack([torch.nn.functional.cross_entropy(logits[i], y[i]) for i in range(3)])
    assert torch.allclose(ce.total(logits, y), per_example.sum()) and torch.allclose(ce.mean(logits, y),
                                                                                      per_example.mean())
    assert ce.correct(logits, y) == (int((logits.argmax(-1) == y).sum()), 15)
    mse = Loss("mse")
    out, target = torch.randn(4, 1), torch.randn(4)
    assert torch.allclose(mse.total(out, target), ((out[:, 0] - target) ** 2).sum())
    assert mse.correct(out, target) == (0, 0) and not mse.classification
