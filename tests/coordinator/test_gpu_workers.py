"""GPU workers (`make gpu-check`): here only the CPU path and the exit without a GPU can run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_check  # noqa: E402  (bench/ is a folder of scripts, not a package)
from common import Context, JobRun, JobSpec  # noqa: E402

from coordinator.accounting import RoundBytes  # noqa: E402
from coordinator.documents import JobResult, JobStatus, ReplicaChecks  # noqa: E402
from coordinator.rounds import RoundEvent  # noqa: E402


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


def test_the_gpu_section_reads_and_fails_on_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text a GPU machine writes, from made-up runs (its first real run is on such a machine)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Test GPU")

    def run(mismatches: int) -> JobRun:
        result = JobResult(status=JobStatus.SUCCEEDED, final={"dev_accuracy": 0.9},
                           replica_checks=ReplicaChecks(checked=49, mismatches=mismatches))
        events = [RoundEvent(t, "full" if t % 2 == 0 else "stochastic", 0.01 * (t % 2 + 1), RoundBytes(), 0, 1.0)
                  for t in range(20)]
        return JobRun(gpu_check.MIXED, result, events)

    timed = [run(0) for _ in gpu_check.TIMED]
    good = gpu_check.render(gpu_check.Mixed(run(0), ["cuda", "cpu"]), timed)
    assert "Test GPU" in good and "49 replica checks, 0 mismatches" in good and gpu_check.FAILED not in good
    assert "| MLP [3000] | 100 | 10.00 ms | 20.00 ms |" in good
    assert gpu_check.FAILED in gpu_check.render(gpu_check.Mixed(run(1), ["cuda", "cpu"]), timed)
    assert gpu_check.FAILED in gpu_check.render(gpu_check.Mixed(run(0), ["cpu", "cpu"]), timed)
