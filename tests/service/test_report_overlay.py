"""`hes report DIR1 DIR2 ...`: several real (tiny digits) jobs overlaid against epoch and bytes sent."""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from coordinator.config import validate_config
from coordinator.job import Job
from service.cli import main
from service.overlay import plot_overlay, read_series

OVERLAYS = ("accuracy_vs_epoch", "accuracy_vs_bytes", "loss_vs_epoch", "loss_vs_bytes")


def run_job(folder: Path, mode: str, workers: int = 2) -> Path:
    torch.set_num_threads(1)
    raw = {"name": mode, "seed": 2, "data": {"dataset": "digits"},
           "model": {"arch": "mlp", "hidden": [12], "activation": "sigmoid"},
           "train": {"epochs": 2, "batch_size": 100, "lr": 1.0},
           "hybrid": {"mode": mode, "r": 2, "k": 3, "sigma": 1.0},
           "cluster": {"workers": workers, "backend": "local"}}
    assert Job(validate_config(raw), folder).run().status == "SUCCEEDED"
    return folder


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("overlay")
    return [run_job(root / "hybrid", "hybrid"), run_job(root / "localsgd", "localsgd"),
            run_job(root / "inprocess", "backprop", workers=0)]


def drop_accuracy(src: Path, dst: Path) -> Path:
    """A loss-only history (no accuracy columns), from a real one."""
    dst.mkdir()
    with (src / "history.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [c for c in rows[0] if "accuracy" not in c]
    with (dst / "history.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return dst


def curves(fig) -> dict[str, tuple[list[float], list[float]]]:  # type: ignore[no-untyped-def]
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in fig.axes[0].get_lines()}


def test_overlay_pngs_of_real_jobs(jobs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plots"
    assert main(["report", *map(str, jobs), "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).stem for p in written) == sorted(OVERLAYS)
    for name in OVERLAYS:
        assert imread(out / f"{name}.png").shape[0] > 100


def test_the_curves_are_the_histories(jobs: list[Path]) -> None:
    series = [read_series(str(j), None) for j in jobs]
    figs = plot_overlay(series)
    for s, folder in zip(series, jobs, strict=True):
        with (folder / "history.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        epochs = [float(r["epoch"]) for r in rows]
        assert curves(figs["accuracy_vs_epoch"])[s.label] == (epochs, [float(r["dev_accuracy"]) for r in rows])
    by_bytes = curves(figs["accuracy_vs_bytes"])
    assert len(by_bytes) == 2  # the in-process job sent nothing: left out, and named in the title
    assert "inprocess" in figs["accuracy_vs_bytes"].axes[0].get_title()
    hybrid = series[0]
    assert by_bytes[hybrid.label][0] == hybrid.column("bytes_total")


def test_loss_only_jobs_do_not_break_it(jobs: list[Path], tmp_path: Path) -> None:
    loss_only = drop_accuracy(jobs[0], tmp_path / "lossonly")
    figs = plot_overlay([read_series(str(loss_only), None), read_series(str(jobs[1]), None)])
    assert set(figs) == set(OVERLAYS)
    assert "lossonly: no accuracy" in figs["accuracy_vs_epoch"].axes[0].get_title()
    assert len(curves(figs["loss_vs_epoch"])) == 2
    alone = plot_overlay([read_series(str(loss_only), None), read_series(str(loss_only), None)])
    assert set(alone) == {"loss_vs_epoch", "loss_vs_bytes"}
    out = tmp_path / "only"
    assert main(["report", str(loss_only), str(loss_only), "--out", str(out)]) == 0
    assert (out / "loss_vs_bytes.png").is_file()


def test_the_loss_axis_names_the_jobs_loss_and_mixed_losses(jobs: list[Path]) -> None:
    ce = read_series(str(jobs[0]), None)
    assert ce.loss == "cross-entropy loss"
    assert plot_overlay([ce])["loss_vs_epoch"].axes[0].get_ylabel() == "cross-entropy loss"
    mse = replace(ce, label="regression", loss="mean squared error")
    assert plot_overlay([mse])["loss_vs_epoch"].axes[0].get_ylabel() == "mean squared error"
    assert "not comparable" in plot_overlay([ce, mse])["loss_vs_epoch"].axes[0].get_ylabel()


def test_a_folder_without_history_is_a_clear_error(jobs: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(jobs[0]), str(tmp_path)]) == 2
    assert "history.csv" in capsys.readouterr().err
