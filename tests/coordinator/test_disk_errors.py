"""A full disk (a real ENOSPC: the output's tmp file is a link to /dev/full) ends the job FAILED with a readable
message naming the error, the file and the output; no partial file is left; a failure to write the failure
itself still returns the failed result."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from coordinator.accounting import Counters
from coordinator.config import validate_config
from coordinator.job import Job
from coordinator.outputs import CheckpointMeta, OutputError, save_checkpoint, write_history, write_json, write_model
from service.cli import main as hes


def small_cfg() -> dict:
    return {"name": "disk", "seed": 3, "data": {"dataset": "digits"},
            "model": {"arch": "mlp", "hidden": [16], "activation": "sigmoid"},
            "train": {"epochs": 1, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
            "hybrid": {"mode": "hybrid", "r": 2, "k": 2, "sigma": 1.0, "combine": "argmin"},
            "cluster": {"workers": 0}}


def full(path: Path) -> Path:
    """Make writing `path` fail as on a full disk (ENOSPC from the kernel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/full", path)
    return path


def enospc(path: Path, what: str) -> str:
    return f"OSError: [Errno 28] No space left on device: '{path}' while writing {what}"


def test_each_output_writer_leaves_no_tmp_file_and_names_it(tmp_path: Path) -> None:
    writers = [
        ("checkpoint.tmp.npz", "the checkpoint", lambda: save_checkpoint(tmp_path, np.zeros(50_000, np.float32),
                                                                         None, CheckpointMeta(1, [], Counters()))),
        ("result.json.tmp", "result.json", lambda: write_json(tmp_path / "result.json", {"a": 1})),
        ("history.csv.tmp", "history.csv", lambda: write_history(tmp_path / "history.csv", [{"epoch": 1}] * 2000)),
        ("model.safetensors.tmp", "the model",
         lambda: write_model(tmp_path / "model.safetensors", {"w": np.zeros(50_000, np.float32)}, {})),
    ]
    for tmp, what, write in writers:
        full(tmp_path / tmp)
        with pytest.raises(OutputError) as info:
            write()
        assert str(info.value) == enospc(tmp_path / tmp, what)
        assert info.value.__cause__ is not None and info.value.__cause__.errno == 28
        assert os.listdir(tmp_path) == []  # neither the partial file nor the output


def test_a_full_disk_at_the_checkpoint_fails_the_job_readably(tmp_path: Path) -> None:
    tmp = full(tmp_path / "checkpoint.tmp.npz")
    result = Job(validate_config(small_cfg()), tmp_path).run()
    assert (result.status, result.message) == ("FAILED", enospc(tmp, "the checkpoint"))
    assert json.loads((tmp_path / "result.json").read_text())["message"] == result.message
    assert "No space left on device" in (tmp_path / "error.log").read_text()
    assert sorted(os.listdir(tmp_path)) == ["config.json", "error.log", "result.json"]


def test_a_full_disk_at_the_model_fails_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps(small_cfg()))
    out = tmp_path / "out"
    tmp = full(out / "model.safetensors.tmp")
    assert hes(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert f"status FAILED: {enospc(tmp, 'the model')}\n" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["status"] == "FAILED"
    assert not (out / "model.safetensors").exists() and not (out / "model.safetensors.tmp").exists()


def test_when_the_failure_cannot_be_written_the_result_still_says_why(tmp_path: Path) -> None:
    for name in ("checkpoint.tmp.npz", "error.log.tmp", "result.json.tmp"):
        full(tmp_path / name)
    result = Job(validate_config(small_cfg()), tmp_path).run()
    assert (result.status, result.message) == ("FAILED", enospc(tmp_path / "checkpoint.tmp.npz",
                                                                     "the checkpoint"))
    assert os.listdir(tmp_path) == ["config.json"]
