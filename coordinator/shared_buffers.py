"""Shared-memory result buffers for the worker actors on the coordinator's own Ray node (no Ray here).

Such a worker returns its arrays (a full round's gradient, an average round's parameters) through a file of 4P
bytes in /dev/shm instead of Ray's reply: created before the actor, mapped by both, its name unlinked as soon as
every actor has started (a restarted actor finds no name and uses Ray's reply again; if the coordinator dies while
its actors start, the next pool on that node removes the orphaned files). The buffers take at most 5% of
/dev/shm's free space, which Ray's object store shares. The bytes are counted the same. What it saves is measured
in BENCHMARKS.md, section 5. `HES_SHM_DISABLE=1` in the coordinator's environment turns it off.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid

import numpy as np

SHM_DIR = "/dev/shm"
SHM_DISABLE = "HES_SHM_DISABLE"
SHM_SHARE_MAX = 0.05  # of /dev/shm's free space, which Ray's object store sized itself against
_SHM_NAME = re.compile(r"hes-(\d+)-[0-9a-f]+-w\d+")


class SharedBuffer:
    """One co-located worker's result buffer: a file in /dev/shm, its pages reserved, mapped here."""

    def __init__(self, worker: int, num_parameters: int) -> None:
        self.path = os.path.join(SHM_DIR, f"hes-{os.getpid()}-{uuid.uuid4().hex[:12]}-w{worker}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, 4 * num_parameters)  # ENOSPC now, not SIGBUS at the first write
            self.array = np.memmap(self.path, dtype="<f4", mode="r+", shape=(num_parameters,))
        except (OSError, ValueError):
            self.unlink()
            raise
        finally:
            os.close(fd)

    def view(self) -> np.ndarray:
        """The worker's last array, read-only; valid until its next call (the round loop combines first)."""
        v = self.array.view(np.ndarray)[:]
        v.flags.writeable = False
        return v

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def remove_orphans() -> int:
    """Unlink the buffers of coordinators that died while their actors were starting (the one window in
    which a name exists); returns how many. Every pool does this on its node before making its own."""
    removed = 0
    for name in os.listdir(SHM_DIR):
        m = _SHM_NAME.fullmatch(name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
        except PermissionError:
            pass  # alive, someone else's
    return removed


def shared_buffers(local: list[int], num_parameters: int) -> dict[int, SharedBuffer]:
    """A buffer for each of the `local` workers (those on this process's node); none when /dev/shm is missing or
    the buffers would take more than 5% of its free space (Ray's object store lives there)."""
    if not local or not os.path.isdir(SHM_DIR):
        return {}
    remove_orphans()
    st = os.statvfs(SHM_DIR)
    if 4 * num_parameters * len(local) > SHM_SHARE_MAX * st.f_bavail * st.f_frsize:
        return {}
    out = {}
    for i in local:
        try:
            out[i] = SharedBuffer(i, num_parameters)
        except (OSError, ValueError):
            break  # Ray carries the arrays of this worker and the rest
    return out
