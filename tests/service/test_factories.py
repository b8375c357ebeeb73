"""A REST job runs only the factories HES_ALLOWED_FACTORIES allows, judged by name before any import; no code
travels with it (cluster.runtime_env); its .npz lies inside the allowed data roots."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from coordinator.config import validate_config
from service.app import create_app
from service.runner import Runner
from service.settings import Settings
from service.store import Store
from service.validation import Refused, admit

TABULAR = {"data": {"dataset": "factory", "factory": "examples.tabular:breast_cancer"},
           "model": {"arch": "module", "factory": "examples.tabular:mlp"},
           "train": {"epochs": 2, "batch_size": 32}, "hybrid": {"k": 4}, "cluster": {"workers": 2}}
CLUSTER = {"CPU": 2.0}


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("HES_ALLOWED_FACTORIES", raising=False)
    monkeypatch.setattr("examples.tabular.CACHE", tmp_path / "cache")
    (tmp_path / "data").mkdir()
    return Settings(state_dir=tmp_path / "state", allowed_data_roots=[tmp_path / "data"])


@pytest.fixture()
def tripwire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module that leaves a file behind when it is imported."""
    marker = tmp_path / "imported"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "hes_tripwire.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef net():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield marker
    sys.modules.pop("hes_tripwire", None)


def refused(raw: dict[str, Any], settings: Settings) -> str:
    with pytest.raises(Refused) as err:
        admit(validate_config(raw), settings, CLUSTER)
    return str(err.value)


def test_factories_outside_the_allow_list_are_refused_unimported(settings: Settings, tripwire: Path) -> None:
    assert settings.allowed_factories == ["examples"]
    msg = refused({**TABULAR, "model": {"arch": "module", "factory": "hes_tripwire:net"}}, settings)
    assert msg == ("model.factory: 'hes_tripwire:net' is outside the factories this service runs (examples; "
                   "HES_ALLOWED_FACTORIES)")
    msg = refused({**TABULAR, "data": {"dataset": "factory", "factory": "hes_tripwire:net"}}, settings)
    assert msg.startswith("data.factory: 'hes_tripwire:net' is outside the factories")
    assert refused({**TABULAR, "model": {"arch": "module", "factory": "examples_x.m:net"}}, settings).startswith(
        "model.factory:")
    assert not tripwire.exists()
    assert refused({**TABULAR, "cluster": {"workers": 2, "runtime_env": {"working_dir": "."}}}, settings).startswith(
        "cluster.runtime_env: the service runs no code sent with a job")


def test_an_allowed_factory_is_admitted_and_checked(settings: Settings, tripwire: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, total = admit(validate_config(TABULAR), settings, CLUSTER)
    assert total == 2 * (365 // 32)  # 569 rows: 113 test, 91 dev, 365 train
    assert refused({**TABULAR, "model": {"arch": "module", "factory": "examples.tabular:mlp",
                                         "kwargs": {"classes": 1}}}, settings).startswith(
        "data.factory: y_train has label 1, outside 0..0 (the model has 1 outputs)")
    monkeypatch.setenv("HES_ALLOWED_FACTORIES", "examples, hes_tripwire")
    wider = Settings(state_dir=settings.state_dir, allowed_data_roots=settings.allowed_data_roots)
    assert wider.allowed_factories == ["examples", "hes_tripwire"]
    assert refused({**TABULAR, "model": {"arch": "module", "factory": "hes_tripwire:net"}}, wider).startswith(
        "model.factory: hes_tripwire:net returned a NoneType, not a torch.nn.Module")
    assert tripwire.exists()  # allowed: imported, and refused for what it returned


def test_a_black_box_objective_is_refused_outside_the_allow_list_and_admitted_inside(settings: Settings,
                                                                                      tripwire: Path) -> None:
    raw = {"objective": {"factory": "hes_tripwire:net", "inputs": 4, "outputs": 2, "rounds_per_epoch": 5},
           "hybrid": {"mode": "zo", "combine": "es", "k": 4}, "train": {"epochs": 3}, "cluster": {"workers": 2}}
    assert refused(raw, settings).startswith("objective.factory: 'hes_tripwire:net' is outside the factories")
    assert not tripwire.exists()
    allowed = {**raw, "objective": {**raw["objective"], "factory": "examples.control:point_mass"}}
    cfg, total = admit(validate_config(allowed), settings, CLUSTER)
    assert total == 15 and cfg.objective is not None


def test_an_npz_file_must_lie_inside_the_data_roots(settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(100, 30)).astype(np.float32), "y_train": rng.integers(0, 2, 100),
              "x_test": rng.normal(size=(20, 30)).astype(np.float32), "y_test": rng.integers(0, 2, 20)}
    np.savez(tmp_path / "data" / "mine.npz", **arrays)
    np.savez(tmp_path / "outside.npz", **arrays)
    raw = {**TABULAR, "data": {"dataset": "npz", "path": "mine.npz"}}
    cfg, total = admit(validate_config(raw), settings, CLUSTER)
    assert cfg.data.path == str(tmp_path / "data" / "mine.npz") and total == 2 * (80 // 32)
    assert refused({**raw, "data": {"dataset": "npz", "path": str(tmp_path / "outside.npz")}}, settings).startswith(
        f"data.path: '{tmp_path / 'outside.npz'}' lies outside the allowed data roots")
    assert refused({**raw, "data": {"dataset": "npz", "path": "nope.npz"}}, settings) == (
        "data.path: 'nope.npz' does not exist or is not a file")


@pytest.mark.slow
def test_submit_answers_422_naming_the_field(ray_cluster: object, settings: Settings) -> None:
    """The app in this process on the test session's Ray (its lifespan would start a Ray of its own)."""
    app = create_app(settings)
    app.state.store = store = Store(settings.db_path)
    app.state.runner = Runner(settings, store, app.state.metrics)
    try:
        http = TestClient(app)
        for field, body in (("model.factory", {"model": {"arch": "module", "factory": "os:system"}}),
                            ("data.factory", {"data": {"dataset": "factory", "factory": "subprocess:run"}}),
                            ("objective.factory", {"objective": {"factory": "os:system", "inputs": 1, "outputs": 1},
                                                   "hybrid": {"mode": "zo", "combine": "es", "k": 2}})):
            r = http.post("/v1/jobs", json=body)
            assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}: "), r.text
        assert sum(store.counts().values()) == 0  # nothing queued
    finally:
        store.close()


def test_a_module_on_mnist_is_checked_on_blank_images(settings: Settings, tmp_path: Path) -> None:
    from test_admission import write_mnist  # a small MNIST-like folder (IDX files, 8x8 images)

    write_mnist(tmp_path / "data" / "mnist")
    raw = {"data": {"dataset": "mnist", "path": "mnist", "dev_size": 10},
           "model": {"arch": "module", "factory": "examples.resnet_mnist:resnet"},
           "train": {"epochs": 1, "batch_size": 10}, "cluster": {"workers": 2}}
    cfg, total = admit(validate_config(raw), settings, CLUSTER)
    assert total == 4  # 50 images, 10 of them dev
    five = {**raw, "model": {**raw["model"], "kwargs": {"classes": 5}}}
    assert refused(five, settings) == "model.factory: y_train has label 9, outside 0..4 (the model has 5 outputs)"
