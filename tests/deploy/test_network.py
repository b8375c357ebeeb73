"""Over a real network (deploy/netlab.py, root): jobs across namespace hosts with their own addresses and shaped
links, token auth between hosts, a REST submit from another host, and links cut mid-job.

One sandbox serves the module: hosts 1-3 run Ray (head with no CPUs, two 1-CPU worker nodes) and `hes serve` on
host 1; host 4 is a bare host on the same bridge. Its prefix and subnet are its own (t<pid>, 10.254.200.0/24), so a
user's `make net-up` sandbox (hes, 10.254.0.0/24) is never touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))
import netlab  # noqa: E402

WHY = netlab.why_not_usable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY is not None, reason=WHY or "")]

# Link bytes against result.json's payload: Ray's framing, the object store's chunk headers, GCS heartbeats and
# TCP/IP headers add to the payload; they stay within this share of it plus a fixed allowance.
FRAMING_SHARE, FRAMING_FIXED = 0.25, 8_000_000
JOB_TIMEOUT = 420  # a job that has not ended by then hangs: the test fails
DIGITS = ("--config", "digits-demo", "--set", "cluster.workers=2")


@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.Lab]:
    lab = netlab.Lab(prefix=f"t{os.getpid()}", subnet="10.254.200", hosts=4, link="1gbit", ray_hosts=3)
    netlab.up(lab)
    yield lab
    netlab.down(lab.prefix)


def hes_train(lab: netlab.Lab, out: Path, *args: str, during: Any = None) -> tuple[dict[str, Any], float]:
    """`hes train` on host 1 against the cluster: (result.json, seconds). `during(proc)` runs beside the job."""
    cmd = ["ip", "netns", "exec", lab.host(1), f"{lab.venv}/bin/hes", "train", *args, "--out", str(out),
           "--set", f"cluster.address={lab.ray_address}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=lab.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    side = threading.Thread(target=during, args=(out,), daemon=True) if during else None
    if side:
        side.start()
    try:
        log, _ = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"hes train did not end within {JOB_TIMEOUT} s: it hangs")
    if side:
        side.join()
    path = out / "result.json"
    assert path.is_file(), f"hes train wrote no result.json (exit {proc.returncode}): {log[-600:]}"
    return json.loads(path.read_text()), time.monotonic() - t0


def alive_nodes(lab: netlab.Lab) -> int:
    return int(netlab.healthy(lab)["nodes"])  # type: ignore[call-overload]


def test_job_across_three_hosts_bytes_match_result(lab: netlab.Lab, tmp_path: Path) -> None:
    before = [lab.link_bytes(i) for i in range(1, 4)]
    result, _ = hes_train(lab, tmp_path, *DIGITS, "--set", "train.epochs=6")
    after = [lab.link_bytes(i) for i in range(1, 4)]
    assert result["status"] == "SUCCEEDED", result["message"]
    assert result["replica_checks"]["checked"] > 0 and result["replica_checks"]["mismatches"] == 0
    b = result["bytes"]
    down = b["full"]["down"] + b["stochastic"]["down"] + b["dataset"]
    up = b["full"]["up"] + b["stochastic"]["up"]
    head_tx, head_rx = after[0].tx - before[0].tx, after[0].rx - before[0].rx
    workers_rx = sum(after[i].rx - before[i].rx for i in (1, 2))
    workers_tx = sum(after[i].tx - before[i].tx for i in (1, 2))
    # The coordinator runs on host 1 (the driver's node), the two workers on hosts 2 and 3: what result.json says
    # went down leaves through the head's link and arrives over the worker hosts' links, and back for up.
    for name, measured, payload in [("head tx", head_tx, down), ("workers rx", workers_rx, down),
                                    ("head rx", head_rx, up), ("workers tx", workers_tx, up)]:
        assert payload <= measured <= payload * (1 + FRAMING_SHARE) + FRAMING_FIXED, (
            f"{name}: link carried {measured} bytes, result.json says {payload}")


def test_rest_submit_from_another_host(lab: netlab.Lab) -> None:
    submit = [f"{lab.venv}/bin/hes", "submit", "digits-demo", "--server", lab.api_url, "--set", "train.epochs=2"]
    refused = lab.run(2, *submit, env=lab.env(ray_token=False), check=False)
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    done = lab.run(2, *submit, "--watch", timeout=JOB_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted job" in done.stdout and "SUCCEEDED" in done.stdout, done.stdout


def test_host_without_ray_token_cannot_join_or_run(lab: netlab.Lab) -> None:
    # a refused driver asks the GCS again 20 times a second apart by default; 3 times tell as much
    outsider = lab.env(ray_token=False) | {"RAY_NUM_REDIS_GET_RETRIES": "3"}
    probe = ("import sys, ray\ntry:\n    ray.init(address=sys.argv[1], log_to_driver=False)\n"
             "    print('RAN', ray.get(ray.remote(lambda: 1).remote(), timeout=30))\n"
             "except Exception as e:\n    print('REFUSED', type(e).__name__, str(e)[:200])")
    try:
        ran = lab.run(4, f"{lab.venv}/bin/python", "-c", probe, lab.ray_address, env=outsider, timeout=120).stdout
    except netlab.LabError as e:  # still waiting after two minutes: it did not get in either
        ran = f"REFUSED {e}"
    assert "RAN" not in ran and "REFUSED" in ran, ran
    wrong = outsider | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    ran = lab.run(4, f"{lab.venv}/bin/python", "-c", probe, lab.ray_address, env=wrong, timeout=120).stdout
    assert "RAN" not in ran and "REFUSED" in ran, ran
    joined = lab.run(4, f"{lab.venv}/bin/ray", "start", f"--address={lab.ray_address}",
                     f"--node-ip-address={lab.ip(4)}", "--num-cpus=1", f"--temp-dir={lab.state}/ray-h4",
                     env=outsider, timeout=120, check=False)
    time.sleep(3)
    assert alive_nodes(lab) == 3, f"an outsider joined the cluster: {joined.stdout[-300:]} {joined.stderr[-300:]}"


def cut_after_first_epoch(lab: netlab.Lab, host: int, seconds: float = 20) -> Any:
    """A side task for hes_train: once the job has finished an epoch, cut host's link for `seconds`."""
    def cut(out: Path) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (out / "history.csv").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        lab.set_link(host, False)
        try:
            time.sleep(seconds)
        finally:
            lab.set_link(host, True)
    return cut


@pytest.mark.parametrize("host", [3, 1], ids=["worker-host", "head"])
def test_link_cut_mid_job_ends_cleanly(lab: netlab.Lab, tmp_path: Path, host: int) -> None:
    # Long enough that the cut (20 s, after the first epoch) falls well inside the job.
    result, seconds = hes_train(lab, tmp_path, *DIGITS, "--set", "train.epochs=40",
                                during=cut_after_first_epoch(lab, host))
    assert seconds > 20
    if result["status"] == "SUCCEEDED":
        assert result["replica_checks"]["mismatches"] == 0
        assert result["replica_checks"]["checked"] > 0
    else:
        assert result["status"] == "FAILED", result
        assert len(result["message"]) > 20, f"FAILED without saying why: {result['message']!r}"
    wait_for_nodes(lab, 3)


def wait_for_nodes(lab: netlab.Lab, nodes: int, timeout: float = 30) -> None:
    """The cluster has its worker nodes again after a cut: reconnected by Ray, else (a raylet Ray declared dead
    ends itself) restarted on its host by netlab.rejoin, as an operator would."""
    deadline = time.monotonic() + timeout
    while alive_nodes(lab) < nodes and time.monotonic() < deadline:
        time.sleep(2)
    if alive_nodes(lab) < nodes:
        netlab.rejoin(lab)
    assert alive_nodes(lab) == nodes
