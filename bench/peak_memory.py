"""The memory probe of the bench's peak-memory figures (sections fast-trials and worker-memory): each figure in a
fresh process with glibc's mmap threshold fixed, and the peak resident set of one piece of work above the resident
set just before it. Imports neither Ray nor torch: the measuring processes load it."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# every buffer over 64 kB is mapped when allocated and unmapped when freed, so the resident set follows the live
# tensors, torch's and NumPy's alike
MMAP_THRESHOLD = 65536


def in_fresh_process(script: str, args: list[str], what: str) -> str:
    """The standard output of `python script *args` run in a fresh process with the fixed mmap threshold; a
    failure raises, naming `what` was measured and ending with the process's error output."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    return done.stdout


def status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmRSS, VmHWM, ...) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


@dataclass(frozen=True)
class Peak:
    above_start: float  # the peak resident bytes during the work, above the resident set just before it
    resident: int  # the process's peak resident set (VmHWM) after the work


def peak_of(work: Callable[[], object]) -> Peak:
    """Run `work` once and measure its peak: garbage collected first, then VmHWM reset to the resident set
    (through /proc/self/clear_refs) and the resident set read just before the work."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = status_bytes("VmRSS")
    work()
    resident = status_bytes("VmHWM")
    return Peak(float(resident - before), resident)
