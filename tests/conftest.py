"""Shared fixtures: one Ray cluster of two nodes per test session (explicit num_cpus), small data sets."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
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
