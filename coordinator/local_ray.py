"""A Ray of this machine's own that listens on loopback only, with Ray's token authentication on.

Ray binds its servers (GCS, raylet, object manager, core workers, dashboard and runtime-env agents) to the
node's IP address, and `ray.init` turns a loopback `_node_ip_address` into the machine's routable address.
Ray's own switch for single-machine use (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read by
`ray._private.services.get_node_ip_address`) makes the node IP 127.0.0.1 instead, so every server binds
loopback. The processes started during `ray.init` (GCS, raylet, agents) inherit it; the worker processes the
raylet starts later inherit the raylet's environment. After the start, the node's address is checked and a
Ray that is not on loopback is shut down again: a Ray open to the network is worse than none.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
import ray._private.ray_constants as ray_constants

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayNotLocal(RuntimeError):
    """The local Ray came up on a non-loopback address; it was shut down."""


def is_loopback_address(host: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped IPv6 forms (::ffff:127.0.0.1, what gRPC's dual-stack sockets show)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@contextmanager
def _local_only() -> Iterator[None]:
    """Ray's single-machine mode for the processes started inside this block; restored afterwards."""
    saved_env, saved_flag = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import time; this process imported Ray already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def start_loopback_ray(num_cpus: int | None = None, **kwargs: Any) -> str:
    """Start a fresh single-node Ray in this process bound to loopback; its node address.

    Ray turns token authentication on for a new local cluster unless RAY_AUTH_MODE says otherwise (its token
    is kept in ~/.ray/auth_token). Raises RayNotLocal, with Ray shut down, when the node is not on loopback."""
    with _local_only():
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    node_ip = str(ray.util.get_node_ip_address())
    if not is_loopback_address(node_ip):
        ray.shutdown()
        raise RayNotLocal(f"the local Ray came up on {node_ip}, not on loopback; refusing to run it open to the "
                          "network (this version of Ray ignores RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)")
    return node_ip
