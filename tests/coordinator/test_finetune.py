"""data.classes, model.init_from and model.trainable: last, in process (no Ray)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.config import ConfigError, validate_config
from coordinator.job import Job, initial_theta
from coordinator.parts import build_parts

FROZEN_MODES = [
    {"mode": "hybrid"},
    {"mode": "hybrid", "noise": "lowrank", "noise_rank": 2},
    {"mode": "hybrid", "combine": "notebook"},
    {"mode": "hybrid", "r": 1},
    {"mode": "backprop"},
    {"mode": "stale"},
    {"mode": "localsgd"},
]


def cfg(name: str = "ft", workers: int = 0, backend: str = "ray", **sections: dict) -> dict:
    raw = {"name": name, "seed": 9, "data": {"dataset": "digits"},
           "model": {"arch": "mlp", "hidden": [12, 8], "activation": "sigmoid"},
           "train": {"epochs": 1, "batch_size": 100, "lr": 1.0, "l2": 1e-3},
           "hybrid": {"mode": "hybrid", "r": 2, "k": 3, "sigma": 1.0},
           "cluster": {"workers": workers, "backend": backend}}
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    return raw


def test_classes_keep_only_those_labels_with_their_values() -> None:
    parts = build_parts(validate_config(cfg(data={"classes": [7, 2, 4]})))
    data, model = parts.data, parts.model
    for y in (data.y_train, data.y_dev, data.y_test):
        assert set(np.unique(y).tolist()) == {2, 4, 7}
    assert model.biases[-1].shape == (10,)  # ten outputs still
    whole = build_parts(validate_config(cfg())).data
    assert len(data.y_train) == int(np.isin(whole.y_train, [2, 4, 7]).sum())
    assert np.array_equal(data.x_train, whole.x_train[np.isin(whole.y_train, [2, 4, 7])])  # same pixels
    with pytest.raises(ConfigError, match="data.classes"):
        validate_config(cfg(data={"classes": [1, 1]}))
    with pytest.raises(ConfigError, match="data.classes"):
        validate_config(cfg(data={"classes": [10]}))


def test_init_from_starts_from_a_finished_job(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    pre = Job(validate_config(cfg("pre", data={"classes": [0, 1, 2, 3, 4]})), tmp_path / "pre")
    assert pre.run().status == "SUCCEEDED"
    c = validate_config(cfg(model={"init_from": str(tmp_path / "pre")}, train={"epochs": 1}))
    model = build_parts(c).model
    assert np.array_equal(initial_theta(c, model), pre.state.theta.numpy())
    job = Job(c, tmp_path / "ft")
    assert np.array_equal(job.state.theta.numpy(), pre.state.theta.numpy())
    assert job.run().status == "SUCCEEDED"


def test_init_from_errors_name_the_field(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="model.init_from: .* is not a folder"):
        Job(validate_config(cfg(model={"init_from": str(tmp_path / "nowhere")})), tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model.init_from: .* holds no model.safetensors"):
        Job(validate_config(cfg(model={"init_from": str(tmp_path / "empty")})), tmp_path / "b")
    Job(validate_config(cfg("pre")), tmp_path / "pre").run()
    with pytest.raises(ValueError, match=r"model.init_from: .*tensor w0 has shape \(12, 64\), this model's is "
                                         r"\(20, 64\)"):
        Job(validate_config(cfg(model={"init_from": str(tmp_path / "pre"), "hidden": [20, 8]})), tmp_path / "c")
    with pytest.raises(ValueError, match="model.init_from: .*tensors missing"):
        Job(validate_config(cfg(model={"init_from": str(tmp_path / "pre"), "hidden": [12]})), tmp_path / "d")


@pytest.mark.parametrize("hybrid", FROZEN_MODES, ids=lambda h: "-".join(str(v) for v in h.values()))
def test_trainable_last_leaves_every_other_parameter_bitwise(tmp_path: Path, hybrid: dict) -> None:
    """Every update of every mode: full, stochastic (gaussian and low-rank trials, the notebook's bias-only step),
    Assisted, localsgd's local steps and averages (two local-backend workers)."""
    torch.set_num_threads(1)
    workers, backend = (2, "local") if hybrid["mode"] == "localsgd" else (0, "ray")
    c = validate_config(cfg(workers=workers, backend=backend, hybrid=hybrid, model={"trainable": "last"}))
    job = Job(c, tmp_path)
    before = job.state.theta.clone()
    assert job.run().status == "SUCCEEDED"
    after = job.state.theta
    nw = job.model.num_weights
    fw, fb = job.hyper.frozen
    assert (fw, fb) == (12 * 64 + 8 * 12, 12 + 8)
    assert torch.equal(after[:fw], before[:fw]) and torch.equal(after[nw:nw + fb], before[nw:nw + fb])
    assert not torch.equal(after[fw:nw], before[fw:nw])  # the last layer trained
    if hybrid["mode"] != "stale":
        assert not torch.equal(after[nw + fb:], before[nw + fb:])


def test_a_frozen_backprop_computes_the_last_layer_s_gradient_only() -> None:
    from workers.hybrid import batch_loss_and_grad_sum

    parts = build_parts(validate_config(cfg(model={"trainable": "last"})))
    data, model, hyper = parts.data, parts.model, parts.hyper
    theta = torch.from_numpy(model.initial_parameters(1))
    x, y = torch.from_numpy(data.x_train[:50]), torch.from_numpy(data.y_train[:50])
    loss_all, full = batch_loss_and_grad_sum(model, theta, x, y)
    loss_last, last = batch_loss_and_grad_sum(model, theta, x, y, hyper.frozen)
    fw, fb = hyper.frozen
    nw = model.num_weights
    assert loss_all == loss_last
    assert not last[:fw].any() and not last[nw:nw + fb].any()
    assert torch.allclose(last[fw:nw], full[fw:nw]) and torch.allclose(last[nw + fb:], full[nw + fb:])


def test_the_new_keys_refuse_bad_values_naming_the_field() -> None:
    bad = [({"data": {"split": "noniid"}}, "data.split"),
           ({"data": {"split": "dirichlet", "alpha": 0.0}}, "data.alpha"),
           ({"model": {"trainable": "first"}}, "model.trainable"), ({"model": {"init_from": ""}}, "model.init_from"),
           ({"cluster": {"backend": "dask"}}, "cluster.backend"),
           ({"cluster": {"backend": "local", "gpus_per_worker": 1}}, "cluster.gpus_per_worker"),
           ({"cluster": {"backend": "local", "address": "ray://x:1"}}, "cluster.address"),
           ({"hybrid": {"diagnostics": 1}}, "hybrid.diagnostics")]
    for sections, field in bad:
        with pytest.raises(ConfigError, match=field):
            validate_config(cfg(**sections))
    c = validate_config(cfg())
    assert (c.data.split, c.data.classes, c.model.init_from, c.model.trainable, c.cluster.backend,
            c.hybrid.diagnostics) == ("iid", None, None, "all", "ray", False)  # today's behaviour
