"""No process that `hes serve` started listens on a non-loopback address, after a job has run on its Ray."""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hes_server import DIGITS_JOB, Server, service_pids, terminal, wait_for_job

from coordinator.local_ray import is_loopback_address

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp*


def _decode(hex_addr: str) -> str:
    """An address of /proc/net/tcp{,6}: little-endian 32-bit words of hex."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_sockets() -> dict[int, str]:
    """inode -> 'address:port' of every listening TCP socket (IPv4 and IPv6) in this network namespace."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == LISTEN:
                addr, port = cols[1].split(":")
                out[int(cols[9])] = f"{_decode(addr)}:{int(port, 16)}"
    return out


def listeners_of(pids: set[int]) -> dict[str, list[str]]:
    """'address:port' -> the process names that hold that listening socket, for the given processes."""
    sockets, found = listening_sockets(), {}
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for link in links:
            if (m := re.fullmatch(r"socket:\[(\d+)\]", link)) and int(m.group(1)) in sockets:
                found.setdefault(sockets[int(m.group(1))], []).append(f"{name}[{pid}]")
    return found


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1", "[::ffff:127.0.0.1]", "localhost"):
        assert is_loopback_address(host), host
    for host in ("0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1", "10.1.2.3", "example.org"):
        assert not is_loopback_address(host), host


@pytest.mark.slow
def test_no_listener_off_loopback_after_a_job(make_server: Callable[..., Server]) -> None:
    server = make_server(HES_API_TOKEN="listen-token")
    with server.client("listen-token") as c:
        r = c.post("/v1/jobs", json={**DIGITS_JOB, "train": {**DIGITS_JOB["train"], "epochs": 1}})
        assert r.status_code == 202, r.text
        job = wait_for_job(c, r.json()["id"], terminal)
        assert job["status"] == "SUCCEEDED", job["message"]
    assert server.proc is not None
    found = listeners_of(service_pids(server.proc.pid))
    names = " ".join(n for owners in found.values() for n in owners)
    assert "gcs_server" in names and "raylet" in names, found  # Ray's own servers were seen, so the check bites
    open_ = {addr: owners for addr, owners in found.items() if not is_loopback_address(addr.rsplit(":", 1)[0])}
    assert not open_, f"listening off loopback: {open_}"
