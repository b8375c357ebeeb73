"""Admission: cheap checks before any data is read, data files confined to the allowed roots, sizes from the IDX
headers only, the service's caps, and the gate that bounds parallel data inspections (503 on `POST /v1/jobs`)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from coordinator.config import ConfigError, validate_config
from coordinator.parts import build_parts
from service.app import create_app
from service.runner import Runner
from service.settings import Settings
from service.store import Store
from service.validation import AdmissionGate, Busy, Refused, admit

DIGITS = {"data": {"dataset": "digits"}, "model": {"hidden": [16]}, "train": {"epochs": 2, "batch_size": 100},
          "hybrid": {"k": 4}, "cluster": {"workers": 2}}
MNIST = {**DIGITS, "data": {"dataset": "mnist", "path": "mnist", "dev_size": 20},
         "train": {"epochs": 3, "batch_size": 10}}


def write_mnist(folder: Path, n_train: int = 50, n_test: int = 10, side: int = 8) -> None:
    """The four IDX files (gzip) of a small MNIST-like set."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, size=n * side * side, dtype=np.uint8).tobytes()
        labels = rng.integers(0, 10, size=n, dtype=np.uint8).tobytes()
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 2051, n, side, side) + pixels))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, n) + labels))


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("HES_MNIST_DIR", raising=False)
    write_mnist(tmp_path / "data" / "mnist")
    return Settings(state_dir=tmp_path / "state", allowed_data_roots=[tmp_path / "data"], max_workers_per_job=4)


def refused(cfg: dict[str, Any], settings: Settings, cluster: dict[str, float] | None = None) -> str:
    with pytest.raises(Refused) as err:
        admit(validate_config(cfg), settings, cluster if cluster is not None else {"CPU": 2.0})
    return str(err.value)


def test_mnist_sizes_come_from_the_headers(settings: Settings, tmp_path: Path) -> None:
    cfg, total = admit(validate_config(MNIST), settings, {"CPU": 2.0})
    assert cfg.data.path == str(tmp_path / "data" / "mnist")
    assert total == 3 * (30 // 10)  # 50 training images, 20 of them dev
    assert refused({**MNIST, "train": {"batch_size": 40}}, settings) == (
        "train.batch_size: 40 exceeds the 30 training examples of mnist")
    assert refused({**MNIST, "data": {**MNIST["data"], "dev_size": 50}}, settings).startswith(
        "data.dev_size: 50 must be at least 1 and below the 50 training images of mnist")
    assert refused({**MNIST, "model": {"arch": "convnet"}}, settings).startswith(
        "model.arch: convnet needs images of at least 16x16 pixels, the data has 8x8")


@pytest.mark.parametrize("change", [
    {"data": {**MNIST["data"], "classes": [0, 1]}},  # 10 a batch, fewer training examples of 0 and 1
    {"train": {"epochs": 3, "batch_size": 3}, "cluster": {"workers": 4}},  # more workers than a batch has examples
])
def test_admission_and_job_start_refuse_the_same_configs(settings: Settings, tmp_path: Path,
                                                         change: dict[str, Any]) -> None:
    """Admission reads the headers and labels, the job loads the images; both build the parts in one place
    (coordinator/parts.py), so they refuse with the same message."""
    at_submit = refused({**MNIST, **change}, settings, {"CPU": 4.0})
    data = {**MNIST["data"], **change.get("data", {}), "path": str(tmp_path / "data" / "mnist")}
    with pytest.raises(ValueError) as at_start:
        build_parts(validate_config({**MNIST, **change, "data": data}))
    assert at_submit == str(at_start.value)
    assert at_submit.startswith(("train.batch_size: 10 exceeds the", "cluster.workers: 4 workers cannot share"))


def test_capacity_is_refused_before_any_data_is_read(settings: Settings, tmp_path: Path) -> None:
    """The data folder's files would not parse; a job the cluster cannot hold is refused for that first."""
    for f in (tmp_path / "data" / "mnist").iterdir():
        f.write_bytes(b"not an IDX file")
    assert refused(MNIST, settings, {"CPU": 1.0}).startswith("cluster.workers: 2 workers x 1 CPU / 0 GPU need 2")
    assert refused(MNIST, settings).startswith("data.path: ")  # with room for it, the data is what is wrong


def test_empty_images_are_refused(settings: Settings, tmp_path: Path) -> None:
    write_mnist(tmp_path / "data" / "empty", side=0)
    message = refused({**MNIST, "data": {**MNIST["data"], "path": "empty"}}, settings)
    assert message.startswith(f"data.path: {tmp_path / 'data' / 'empty' / 'train-images-idx3-ubyte.gz'}: "
                              "images of 0x0 pixels")


def test_a_data_file_linked_outside_the_roots_is_refused_unread(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "mnist"
    (tmp_path / "secret").write_bytes(b"SECRET: do not show")
    (folder / "train-images-idx3-ubyte.gz").unlink()
    (folder / "train-images-idx3-ubyte").symlink_to(tmp_path / "secret")
    message = refused(MNIST, settings)
    assert message.startswith("data.path: train-images-idx3-ubyte in 'mnist' resolves outside the allowed data "
                              f"roots ({tmp_path / 'data'}; HES_ALLOWED_DATA_ROOTS)")
    assert "SECR" not in message and f"{int.from_bytes(b'SECR'):#010x}" not in message
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").symlink_to(folder / "t10k-images-idx3-ubyte.gz")  # a loop
    assert "t10k-images-idx3-ubyte.gz in 'mnist' resolves outside" in refused(MNIST, settings)


def test_a_data_file_linked_inside_the_roots_is_read(settings: Settings, tmp_path: Path) -> None:
    folder, other = tmp_path / "data" / "mnist", tmp_path / "data" / "other"
    other.mkdir()
    (folder / "train-images-idx3-ubyte.gz").rename(other / "images.gz")
    (folder / "train-images-idx3-ubyte.gz").symlink_to(other / "images.gz")
    assert admit(validate_config(MNIST), settings, {"CPU": 2.0})[1] == 9


def test_cpu_share_rounds_and_layers_are_capped(settings: Settings) -> None:
    sliver = {**DIGITS, "cluster": {"workers": 2, "cpus_per_worker": 0.03}}
    assert refused(sliver, settings, {"CPU": 2.0}) == (
        "cluster.cpus_per_worker: 0.03 is below this service's minimum of 0.5 CPUs per worker "
        "(HES_MIN_CPUS_PER_WORKER)")
    admit(validate_config({**DIGITS, "cluster": {"workers": 2, "cpus_per_worker": 0.5}}), settings, {"CPU": 1.0})
    endless = {**DIGITS, "train": {"epochs": 100000, "batch_size": 1}, "cluster": {"workers": 1}}
    assert refused(endless, settings) == (
        "train.epochs: 100000 epochs of 1,198 rounds are 119,800,000 rounds, above this service's limit of "
        "2,000,000 (HES_MAX_TOTAL_ROUNDS)")
    with pytest.raises(ConfigError, match="^model.hidden: List should have at most 16 items"):
        validate_config({**DIGITS, "model": {"hidden": [4] * 17}})
    validate_config({**DIGITS, "model": {"hidden": [4] * 16}})


def test_the_gate_bounds_parallel_inspections(settings: Settings) -> None:
    gate = AdmissionGate(2, 0.01)
    with gate.slot(), gate.slot():
        with pytest.raises(Busy, match=r"^the service is busy: 2 submits .*HES_MAX_PARALLEL_ADMISSIONS"):
            admit(validate_config(MNIST), settings, {"CPU": 2.0}, gate)
        with pytest.raises(Refused, match="^cluster.workers"):  # the cheap checks need no slot
            admit(validate_config(MNIST), settings, {"CPU": 1.0}, gate)
    assert admit(validate_config(MNIST), settings, {"CPU": 2.0}, gate)[1] == 9


@pytest.mark.slow
def test_submit_answers_503_while_the_slots_are_taken(ray_cluster: object, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The app in this process on the test session's Ray (its lifespan would start a Ray of its own)."""
    monkeypatch.delenv("HES_MNIST_DIR", raising=False)
    write_mnist(tmp_path / "data" / "mnist")
    (tmp_path / "secret").write_bytes(b"SECRET")
    write_mnist(tmp_path / "data" / "linked")
    (tmp_path / "data" / "linked" / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "data" / "linked" / "t10k-labels-idx1-ubyte.gz").symlink_to(tmp_path / "secret")
    settings = Settings(state_dir=tmp_path / "state", allowed_data_roots=[tmp_path / "data"],
                        max_parallel_admissions=1, admission_wait_seconds=0.2)
    app = create_app(settings)
    app.state.store = store = Store(settings.db_path)
    app.state.runner = Runner(settings, store, app.state.metrics)
    try:
        http = TestClient(app)
        first = http.post("/v1/jobs", json=MNIST)
        assert first.status_code == 202, first.text
        assert first.json()["progress"]["total_rounds"] == 9
        with app.state.admissions.slot():
            busy = http.post("/v1/jobs", json=MNIST)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["detail"].startswith("the service is busy: 1 submits are having their data checked")
            linked = http.post("/v1/jobs", json={**MNIST, "data": {**MNIST["data"], "path": "linked"}})
            assert linked.status_code == 422  # refused before it needs a slot
            assert linked.json()["detail"].startswith("data.path: t10k-labels-idx1-ubyte.gz in 'linked' resolves "
                                                      "outside the allowed data roots")
            assert "SECR" not in linked.text
        assert http.post("/v1/jobs", json=MNIST).status_code == 202
        assert store.counts().get("PENDING") == 2
    finally:
        store.close()


def test_the_local_backend_is_refused_for_the_service(settings: Settings) -> None:
    assert refused({**DIGITS, "cluster": {"workers": 2, "backend": "local"}}, settings).startswith(
        "cluster.backend: the service runs every job's workers as Ray actors")


def test_init_from_is_confined_to_job_outputs_and_data_roots(settings: Settings, tmp_path: Path) -> None:
    job = settings.jobs_dir / "3f9c0e2a"
    job.mkdir(parents=True)
    (job / "model.safetensors").write_bytes(b"x")
    cfg, _ = admit(validate_config({**DIGITS, "model": {"hidden": [16], "init_from": "3f9c0e2a"}}), settings,
                   {"CPU": 2.0})
    assert cfg.model.init_from == str(job.resolve())  # a relative value names a job of this service
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"x")
    assert "lies outside this service's job outputs" in refused(
        {**DIGITS, "model": {"init_from": str(outside)}}, settings)
    assert "lies outside" in refused({**DIGITS, "model": {"init_from": "../../elsewhere"}}, settings)
    (settings.jobs_dir / "linked").mkdir()
    (settings.jobs_dir / "linked" / "model.safetensors").symlink_to(outside / "model.safetensors")
    assert "holds no model.safetensors inside" in refused({**DIGITS, "model": {"init_from": "linked"}}, settings)
    (settings.jobs_dir / "unfinished").mkdir()
    assert "holds no model.safetensors" in refused({**DIGITS, "model": {"init_from": "unfinished"}}, settings)
