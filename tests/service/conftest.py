"""Fixtures of the service tests: `make_server` starts real `hes serve` processes and stops them after."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hes_server import Server


@pytest.fixture()
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Start servers (each on a fresh state dir unless one is given); all are stopped at the end."""
    servers: list[Server] = []

    def make(state_dir: Path | None = None, **env: str) -> Server:
        server = Server(state_dir or tmp_path_factory.mktemp("svc") / "state", **env)
        servers.append(server)
        return server.start()

    yield make
    for s in servers:
        s.stop()
