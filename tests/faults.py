"""What the fault tests share: processes a test froze are let go again, whatever the job did."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def thawed_after(pids: list[int]) -> Iterator[None]:
    """Run the block, then SIGCONT every pid in `pids` (filled by the block) that still lives: one the pool did not
    kill must not stay stopped after the test."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
