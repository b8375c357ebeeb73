"""`hes report`: PNGs from a job folder, and the plotted series are exactly the history's numbers."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.image import imread

from coordinator.config import validate_config
from coordinator.outputs import HISTORY_COLUMNS, write_history
from coordinator.train import train
from service.cli import main
from service.history import read_history
from service.report import backprop_baseline, bytes_per_round, plot_history

PNGS = ("loss", "accuracy", "bytes_per_round", "cumulative_bytes")


def synthetic_history() -> list[dict[str, float]]:
    """Three epochs of an r = 2 job on 2 workers: 3 full and 2 stochastic rounds per epoch.

    A full round moves 2 workers x (4,000 B up + 4,000 B down) = 16,000 B, except the job's first (no
    gradient to send down yet: 8,000 B up + 2 x 10 B down); a stochastic round 2 x (21 + 15) = 72 B.
    """
    rows, acc = [], dict.fromkeys(HISTORY_COLUMNS, 0.0)
    for epoch in (1, 2, 3):
        full_up, full_down = 3 * 8000.0, 3 * 8000.0 if epoch > 1 else 2 * 8000.0 + 20
        acc.update(epoch=epoch, round=5 * epoch, train_loss=2.0 / epoch, dev_loss=2.2 / epoch,
                   train_accuracy=0.5 + 0.1 * epoch, dev_accuracy=0.45 + 0.1 * epoch, seconds=1.5 * epoch)
        acc["rounds_full"] += 3
        acc["rounds_stochastic"] += 2
        acc["bytes_full_up"] += full_up
        acc["bytes_full_down"] += full_down
        acc["bytes_stochastic_up"] += 2 * 42.0
        acc["bytes_stochastic_down"] += 2 * 30.0
        acc["bytes_sync"] += 16.0
        acc["bytes_total"] += full_up + full_down + 144.0 + 16.0
        acc["improvements"] += 7
        rows.append(dict(acc))
    return rows


def lines(fig) -> dict[str, tuple[list[float], list[float]]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in fig.axes[0].get_lines()}


@pytest.fixture()
def job_dir(tmp_path: Path) -> Path:
    write_history(tmp_path / "history.csv", synthetic_history())
    return tmp_path


def test_plotted_series_are_the_history(job_dir: Path) -> None:
    rows = read_history(job_dir)
    assert rows == synthetic_history()
    figs = plot_history(rows, "synthetic")
    assert set(figs) == set(PNGS)
    epochs = [1.0, 2.0, 3.0]
    assert lines(figs["loss"]) == {"train": (epochs, [2.0, 1.0, 2 / 3]), "dev": (epochs, [2.2, 1.1, 2.2 / 3])}
    assert lines(figs["accuracy"]) == {"train": (epochs, [0.6, 0.7, 0.8]), "dev": (epochs, [0.55, 0.65, 0.75])}
    per_round = lines(figs["bytes_per_round"])
    assert per_round["full"] == (epochs, [(24000 + 16020) / 3, 16000.0, 16000.0])
    assert per_round["stochastic"] == (epochs, [72.0, 72.0, 72.0])
    cumulative = lines(figs["cumulative_bytes"])
    sent = [0.0] + [r["bytes_total"] for r in rows]
    per_full = (rows[-1]["bytes_full_up"] + rows[-1]["bytes_full_down"]) / 9
    assert cumulative["sent (all kinds, sync included)"] == ([0.0, 5.0, 10.0, 15.0], sent)
    assert cumulative["backprop baseline (every round full)"] == ([0.0, 5.0, 10.0, 15.0],
                                                                  [0.0, 5 * per_full, 10 * per_full, 15 * per_full])
    assert "of the backprop baseline" in figs["cumulative_bytes"].axes[0].get_title()


def test_backprop_mode_plots_full_rounds_only() -> None:
    rows = synthetic_history()
    for r in rows:
        r["rounds_full"] += r["rounds_stochastic"]
        r["rounds_stochastic"] = r["bytes_stochastic_up"] = r["bytes_stochastic_down"] = 0.0
    assert set(lines(plot_history(rows, "reference")["bytes_per_round"])) == {"full"}
    assert all(math.isnan(v) for v in bytes_per_round(rows, "stochastic"))
    assert backprop_baseline(rows)[-1] == rows[-1]["bytes_full_up"] + rows[-1]["bytes_full_down"]


def test_hes_report_writes_pngs(job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(job_dir)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(job_dir / "report" / f"{name}.png") for name in PNGS]
    for path in map(Path, written):
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert pixels.min() < pixels.max(), f"{path.name} is blank"


def test_report_of_a_real_job_folder(tmp_path: Path) -> None:
    cfg = validate_config({"name": "report-inprocess", "seed": 3, "data": {"dataset": "digits"},
                           "model": {"arch": "mlp", "hidden": [16], "activation": "sigmoid"},
                           "train": {"epochs": 2, "batch_size": 200, "lr": 1.0},
                           "hybrid": {"mode": "hybrid", "r": 2, "k": 2, "sigma": 1.0},
                           "cluster": {"workers": 0}})
    train(cfg, tmp_path / "job", progress=False)
    assert main(["report", str(tmp_path / "job" / "history.csv"), "--out", str(tmp_path / "png")]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(f"{n}.png" for n in PNGS)
    rows = read_history(tmp_path / "job")
    figs = plot_history(rows, "real")
    assert lines(figs["loss"])["train"][1] == [r["train_loss"] for r in rows]
    assert lines(figs["accuracy"])["dev"][1] == [r["dev_accuracy"] for r in rows]
    assert "ran in-process" in figs["cumulative_bytes"].axes[0].get_title()  # no workers, no payload


def test_unusable_inputs_fail_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing" / "dir")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "history.csv").write_text(",".join(HISTORY_COLUMNS) + "\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished epoch" in capsys.readouterr().err
    (tmp_path / "history.csv").write_text("epoch,loss\n1,0.5\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "not a job history" in capsys.readouterr().err
