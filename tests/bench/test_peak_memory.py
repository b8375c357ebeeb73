"""bench/peak_memory.py, the memory probe of the fast-trials and worker-memory sections: in a fresh process with
the fixed mmap threshold, as the sections run it, the peak of the work alone; a failed process named."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
from peak_memory import MMAP_THRESHOLD, in_fresh_process  # noqa: E402

MIB = 2**20
PROBE = f"""import json, os, sys
sys.path.insert(0, {str(BENCH)!r})
import numpy as np
from peak_memory import peak_of
if sys.argv[1] != "0":
    sys.exit("no such case: " + sys.argv[1])
held = np.ones({64 * MIB // 8})  # resident before the work: not counted
work = peak_of(lambda: np.ones({32 * MIB // 8}).sum())  # 32 MiB touched, freed when the work ends
idle = peak_of(lambda: None)
print(json.dumps([os.environ["MALLOC_MMAP_THRESHOLD_"], work.above_start, work.resident, idle.above_start]))
"""


def test_the_peak_is_the_work_s_own_above_the_start(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    threshold, above, resident, idle = json.loads(in_fresh_process(str(script), ["0"], "the probe"))
    assert threshold == str(MMAP_THRESHOLD)
    assert 32 * MIB <= above < 36 * MIB
    assert resident >= 64 * MIB + above
    assert idle < MIB  # nothing allocated: the freed 32 MiB left the resident set and the peak
    with pytest.raises(RuntimeError, match="the probe failed: no such case: 3"):
        in_fresh_process(str(script), ["3"], "the probe")
