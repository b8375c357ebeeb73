"""bench/peak_memory.py, the memory probe of the fast-trials and worker-memory sections: the peak of the work
alone, and a fresh process's failure named."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from peak_memory import MMAP_THRESHOLD, in_fresh_process, peak_of  # noqa: E402

MIB = 2**20


def test_the_peak_is_the_work_s_own_above_the_start() -> None:
    held = np.ones(64 * MIB // 8)  # resident before the work: not counted
    peak = peak_of(lambda: np.ones(32 * MIB // 8).sum())  # 32 MiB touched, freed when the work ends
    assert 32 * MIB <= peak.above_start < 40 * MIB
    assert peak.resident >= held.nbytes + peak.above_start
    assert peak_of(lambda: None).above_start < 4 * MIB  # nothing allocated: the freed 32 MiB left the peak


def test_a_fresh_process_has_the_fixed_mmap_threshold_and_its_failure_is_named(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text("import os, sys\nprint(os.environ['MALLOC_MMAP_THRESHOLD_'])\n"
                      "if sys.argv[1] != '0':\n    sys.exit('no such case: ' + sys.argv[1])\n")
    assert in_fresh_process(str(script), ["0"], "the probe").strip() == str(MMAP_THRESHOLD)
    with pytest.raises(RuntimeError, match="the probe failed: no such case: 3"):
        in_fresh_process(str(script), ["3"], "the probe")
