"""Models over one flat vector: the paper's sizes, the layout, and the gradient against finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.hybrid import batch_loss_and_grad_sum
from workers.models import build_model, convnet, mlp


def test_paper_mlp_size_and_layout() -> None:
    m = mlp(784, [300])
    assert m.num_parameters == 238_510  # 784*300 + 300 + 300*10 + 10
    assert m.num_weights == 238_200
    theta = torch.from_numpy(m.initial_parameters(100))
    parts = m.unflatten(theta)
    assert parts["w0"].shape == (300, 784) and parts["b1"].shape == (10,)
    assert float(theta[m.num_weights:].abs().sum()) == 0.0  # biases start at zero
    assert abs(float(theta[: m.num_weights].std()) - 1.0) < 0.01  # N(0, 1), not fan-in scaled


def test_convnet_size_and_bad_input() -> None:
    c = convnet(28)
    assert c.num_parameters == 156 + 2416 + 30840 + 10164 + 850
    logits = c.forward(torch.from_numpy(c.initial_parameters(1)), torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    with pytest.raises(ValueError, match="model.arch: convnet needs images of at least 16x16"):
        build_model("convnet", [300], "tanh", None, 8)


@pytest.mark.parametrize("arch,side", [("mlp", 6), ("convnet", 16)])
def test_gradient_matches_finite_differences(arch: str, side: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, [7], "sigmoid", "fan_in", side)
    theta = torch.from_numpy(model.initial_parameters(3)).double()
    x = torch.randn(5, 1, side, side, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 1, 3])
    _, grad = batch_loss_and_grad_sum(model, theta, x, y)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for i in rng.choice(model.num_parameters, size=25, replace=False):
        e = torch.zeros_like(theta)
        e[i] = eps
        up = F.cross_entropy(model.forward(theta + e, x), y, reduction="sum")
        down = F.cross_entropy(model.forward(theta - e, x), y, reduction="sum")
        numeric = float((up - down) / (2 * eps))
        assert abs(numeric - float(grad[i])) < 1e-6 * max(1.0, abs(numeric)), i
