"""Shared fixtures: one Ray cluster of two nodes per test session (explicit num_cpus), small data sets."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


FREE_WAIT_S = 60.0


@pytest.fixture
def ray_cluster(ray_session_cluster: object) -> object:
    """The session's cluster once the CPUs of the tests before have come back (up to FREE_WAIT_S): a SPREAD
    placement group is best effort, and packs a job onto one node while the other still looks busy."""
    import ray

    deadline = time.monotonic() + FREE_WAIT_S
    total = ray.cluster_resources().get("CPU", 0.0)
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    return ray_session_cluster


@pytest.fixture(scope="session")
def ray_session_cluster() -> Iterator[object]:
    """A two-node `ray.cluster_utils.Cluster` (2 + 2 logical CPUs) shared by every Ray test."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="hes", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
