"""GPU workers (`make gpu-check`): here only the CPU path and the exit without a GPU can run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_check  # noqa: E402  (bench/ is a folder of scripts, not a package)
from common import Context, JobSpec  # noqa: E402


def test_without_a_gpu_it_says_so_keeps_the_other_sections_and_exits_0(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# BENCHMARKS\n\n<!-- bench:chaos -->\n## Chaos soak\nkept\n<!-- /bench:chaos -->\n")
    assert gpu_check.main(["--out", str(out), "--mnist", str(tmp_path)]) == 0
    text = out.read_text()
    assert "## GPU check" in text and "No CUDA GPU here" in text and "## Chaos soak\nkept\n" in text
    assert gpu_check.main(["--out", str(out), "--mnist", str(tmp_path)]) == 0  # replaced, not added twice
    assert out.read_text().count("## GPU check") == 1


@pytest.mark.slow
def test_the_mixed_job_on_cpus_agrees_and_reports_devices(ray_cluster: object, tmp_path: Path) -> None:
    """The mixed job's code path with the "GPU" worker given no GPU: both report cpu, every check agrees."""
    spec = JobSpec("digits-demo", ("model.hidden=[16]", "hybrid.k=2", "train.epochs=1", "cluster.workers=2",
                                   "cluster.cpus_per_worker=0.5", "hybrid.replica_check_every=1"))
    mixed = gpu_check.mixed_job(Context("", tmp_path, "test", 1), spec, gpu_workers=1)
    assert mixed.devices == ["cpu", "cpu"]
    assert mixed.agree and mixed.run.result.replica_checks.checked >= 2 * mixed.run.result.rounds.full
