"""The shared-memory result buffers of co-located workers, without Ray: creation, failure, orphans."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator import shared_buffers
from coordinator.shared_buffers import SharedBuffer, remove_orphans
from workers.actor import open_shared


@pytest.fixture()
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(shared_buffers, "SHM_DIR", str(tmp_path))
    return tmp_path


def test_a_buffer_is_seen_by_the_worker_and_outlives_its_name(shm_dir: Path) -> None:
    buf = SharedBuffer(0, 1000)
    worker = open_shared(buf.path, 1000)
    assert worker is not None
    buf.unlink()  # as the pool does once every actor has started
    assert list(shm_dir.iterdir()) == []
    worker[:] = np.arange(1000, dtype=np.float32)
    view = buf.view()
    assert np.array_equal(view, np.arange(1000, dtype=np.float32)) and not view.flags.writeable
    assert open_shared(buf.path, 1000) is None  # a restarted actor: the name is gone, Ray's reply it is


def test_a_full_shm_leaves_no_file_behind(shm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError):
        SharedBuffer(0, 1000)
    assert list(shm_dir.iterdir()) == []


def test_orphans_of_dead_coordinators_are_removed_and_live_ones_kept(shm_dir: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    orphan = shm_dir / f"hes-{dead_pid}-0123456789ab-w0"
    mine = shm_dir / f"hes-{os.getpid()}-0123456789ab-w1"
    other = shm_dir / "plasma-something"
    for f in (orphan, mine, other):
        f.write_bytes(b"\0" * 16)
    assert remove_orphans() == 1
    assert sorted(p.name for p in shm_dir.iterdir()) == sorted([mine.name, other.name])
