"""Section `wire`: Ray's real bytes per round on the loopback wire of a multi-node `ray.cluster_utils.Cluster`.

A head node (no CPUs: it holds the coordinator, this process) and two worker nodes on this machine. Once
the job's worker actors are up, tshark captures on `lo` the TCP ports this process and its descendants
(the Ray nodes it started) listen on, so other users' traffic is left out. Every round is stamped with
its start time; after the last round an idle baseline of the same length is captured with the actors
still alive. Each packet is attributed to the nodes of its two endpoints (port -> process -> node, from
/proc); bytes between different nodes are what a real network would carry.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from common import Context, JobSpec, ObservedPool, code, ms, num, ratio, run_job, table
from ray.cluster_utils import Cluster

from coordinator.accounting import Counters, RoundBytes
from coordinator.config import JobConfig
from coordinator.parts import JobParts
from coordinator.ray_pool import RayPool, ray_pool
from workers.messages import Result, RoundKind, Task
from workers.state import DecisionKind

WORKERS = 2
HYBRID_R = 50  # one full round per 50-round epoch: the rest are stochastic rounds carrying only seeds
HYBRID_EPOCHS = 2
BACKPROP_EPOCHS = 1
OBJECT_STORE_BYTES = 400 * 1024**2  # per node: the 157 MB training set must fit on every worker node
SNAPLEN = 96  # bytes kept per packet: headers only; frame.len still records the length on the wire
CAPTURE_LIMIT_S = 900  # tshark stops by itself after this long, whatever happens here
SETTLE_S = 1.0  # after the last round, before the idle baseline starts
START_TIMEOUT_S = 30.0
HYBRID_SPEC = JobSpec("paper-hes-r2", (f"hybrid.r={HYBRID_R}", f"train.epochs={HYBRID_EPOCHS}",
                                       f"cluster.workers={WORKERS}"))
BACKPROP_SPEC = JobSpec("paper-hes-r2", ("hybrid.mode=backprop", f"train.epochs={BACKPROP_EPOCHS}",
                                         f"cluster.workers={WORKERS}"))
TASK_EVENTS_OFF = {"task_events_report_interval_ms": 0}  # Ray system config: no task state events sent to the GCS
SAME_NODE, UNATTRIBUTED = "same node", "unattributed"  # traffic classes besides inter-node pairs


@dataclass(frozen=True)
class Stamp:
    round: int
    kind: RoundKind
    decision: DecisionKind
    start: float  # time.time() when the round's tasks were sent
    end: float
    payload: int  # payload bytes the round moved, all workers, both directions


@dataclass
class Capture:
    """One tshark process writing a pcap of the given ports on lo."""
    path: Path
    ports: set[int]
    proc: subprocess.Popen[str] | None = None
    log: str = ""

    def start(self) -> None:
        bpf = "tcp and (" + " or ".join(f"port {p}" for p in sorted(self.ports)) + ")"
        self.proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", bpf, "-s", str(SNAPLEN), "-w", str(self.path), "-q",
             "-a", f"duration:{CAPTURE_LIMIT_S}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            self.log += line
            if line.startswith("Capturing on"):
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"tshark did not start capturing: {self.log.strip() or 'no output'}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        self.log += self.proc.stderr.read()
        self.proc = None


@dataclass
class Processes:
    """This process's descendants: their TCP ports, the node each runs on and its role in the job."""
    port_pid: dict[int, int] = field(default_factory=dict)
    listening: set[int] = field(default_factory=set)
    pid_node: dict[int, str] = field(default_factory=dict)
    pid_role: dict[int, str] = field(default_factory=dict)

    def traffic_class(self, port_a: int, port_b: int) -> str:
        """"coordinator - worker actor" and the like for two nodes, SAME_NODE, or UNATTRIBUTED."""
        pa, pb = self.port_pid.get(port_a), self.port_pid.get(port_b)
        if pa is None or pb is None:
            return UNATTRIBUTED
        if self.pid_node[pa] == self.pid_node[pb]:
            return SAME_NODE
        return " - ".join(sorted((self.pid_role[pa], self.pid_role[pb])))


def _parents() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        out[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    return out


def _tcp_sockets() -> dict[int, tuple[int, bool]]:
    """inode -> (local port, listening) for every TCP socket of this network namespace."""
    out = {}
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table_path).read_text().splitlines()[1:]:
            f = line.split()
            out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), f[3] == "0A")
    return out


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def scan_processes(node_manager_ports: dict[int, str], head: str, actor_pids: set[int]) -> Processes:
    """Ports of this process and its descendants; each process's node is that of the raylet it descends from."""
    parents = _parents()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, ppid in parents.items():
        children[ppid].append(pid)
    ours, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo += children[pid]
    sockets, found = _tcp_sockets(), Processes()
    raylets: dict[int, str] = {}
    for pid in ours:
        for inode in _socket_inodes(pid):
            if inode in sockets:
                port, listening = sockets[inode]
                found.port_pid[port] = pid
                if listening:
                    found.listening.add(port)
                    if port in node_manager_ports:
                        raylets[pid] = node_manager_ports[port]
    for pid in ours:
        at = pid
        while at in parents and at not in raylets and at != os.getpid():
            at = parents[at]
        found.pid_node[pid] = raylets.get(at, head)
        found.pid_role[pid] = _role(pid, raylets, actor_pids)
    return found


def _role(pid: int, raylets: dict[int, str], actor_pids: set[int]) -> str:
    if pid == os.getpid():
        return "coordinator"
    if pid in actor_pids:
        return "worker actor"
    if pid in raylets:
        return "raylet"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = ""
    return "GCS" if comm == "gcs_server" else "other Ray process"


class CapturingPool(ObservedPool[RayPool]):
    """The Ray pool, plus: tshark from the first round on, a time stamp per round, an idle baseline at close."""

    def __init__(self, inner: RayPool, capture: Capture, rescan: Callable[[], Processes]) -> None:
        super().__init__(inner)
        self.capture, self.rescan = capture, rescan
        self.stamps: list[Stamp] = []
        self.idle: tuple[float, float] = (0.0, 0.0)
        self.processes = Processes()

    def sending(self, task: Task) -> float:
        return time.time()

    def collected(self, task: Task, mark: float, results: list[Result], rb: RoundBytes) -> None:
        self.stamps.append(Stamp(task.round, task.kind, task.decision.kind, mark, time.time(), rb.total))

    def closing(self) -> None:
        try:
            self.processes = self.rescan()  # every connection of the job is still open here
            time.sleep(SETTLE_S)
            length = self.stamps[-1].end - self.stamps[0].start if self.stamps else 0.0
            idle_start = time.time()
            time.sleep(length)
            self.idle = (idle_start, time.time())
        finally:
            self.capture.stop()


@dataclass
class Packets:
    time: np.ndarray  # float64 seconds since the epoch, sorted
    frame: np.ndarray  # int64 bytes on the wire (loopback frame: pseudo-Ethernet, IP, TCP headers, payload)
    tcp: np.ndarray  # int64 TCP payload bytes
    cls: np.ndarray  # int64 index into `classes`
    classes: list[str]

    def sums(self, lo: float, hi: float) -> dict[str, float]:
        """Frame bytes per traffic class between lo and hi, plus the inter-node totals (frames and TCP payload)."""
        a, b = np.searchsorted(self.time, [lo, hi])
        frame, tcp, cls = self.frame[a:b], self.tcp[a:b], self.cls[a:b]
        out = {name: float(frame[cls == i].sum()) for i, name in enumerate(self.classes)}
        inter = np.isin(cls, [i for i, name in enumerate(self.classes) if name not in (SAME_NODE, UNATTRIBUTED)])
        out["inter-node"] = float(frame[inter].sum())
        out["inter-node TCP payload"] = float(tcp[inter].sum())
        out["all"] = float(frame.sum())
        return out


def read_packets(path: Path, procs: Processes) -> Packets:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=,", "-e", "frame.time_epoch",
                          "-e", "frame.len", "-e", "tcp.len", "-e", "tcp.srcport", "-e", "tcp.dstport"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in out.splitlines() if line.count(",") == 4]
    classes = [SAME_NODE, UNATTRIBUTED]
    codes = []
    for r in rows:
        name = procs.traffic_class(int(r[3]), int(r[4]))
        if name not in classes:
            classes.append(name)
        codes.append(classes.index(name))
    t = np.array([float(r[0]) for r in rows], dtype=np.float64)
    order = np.argsort(t, kind="stable")
    return Packets(t[order], np.array([int(r[1]) for r in rows], dtype=np.int64)[order],
                   np.array([int(r[2] or 0) for r in rows], dtype=np.int64)[order],
                   np.array(codes, dtype=np.int64)[order], classes)


@dataclass
class WireJob:
    spec: JobSpec
    pool: CapturingPool
    packets: Packets
    placement: list[str]
    log: str


def _cluster(system_config: dict[str, int]) -> tuple[Cluster, dict[int, str], str]:
    """Head (no CPUs) and worker nodes, this process connected; node manager port -> node label, head label."""
    head_args: dict[str, Any] = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": OBJECT_STORE_BYTES}
    if system_config:
        head_args["_system_config"] = dict(system_config)  # Ray adds its own keys to the dict it gets
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    for _ in range(WORKERS):
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, namespace="hes-bench")
    ports = {}
    for i, node in enumerate(sorted(ray.nodes(), key=lambda n: "node:__internal_head__" not in n["Resources"])):
        ports[int(node["NodeManagerPort"])] = "head" if i == 0 else f"worker node {i}"
    return cluster, ports, "head"


def _on_cluster(ctx: Context, system_config: dict[str, int], specs: list[JobSpec], scratch: Path) -> list[WireJob]:
    """Capture each job in turn on a fresh Cluster started with Ray `system_config`."""
    ray.shutdown()
    cluster, node_ports, head = _cluster(system_config)
    try:
        return [_capture_job(ctx, spec, node_ports, head, scratch) for spec in specs]
    finally:
        ray.shutdown()
        cluster.shutdown()


def _capture_job(ctx: Context, spec: JobSpec, node_ports: dict[int, str], head: str, scratch: Path) -> WireJob:
    holder: dict[str, CapturingPool] = {}
    placement: list[str] = []
    labels = {n["NodeID"]: lbl for n in ray.nodes() for p, lbl in node_ports.items() if n["NodeManagerPort"] == p}

    def factory(cfg: JobConfig, parts: JobParts, counters: Counters) -> CapturingPool:
        inner = ray_pool(cfg, parts, counters)
        infos = ray.get([a.info.remote() for a in inner.actors])  # waits until every worker holds the data
        placement.extend(labels.get(i.node, i.node) for i in infos)
        actor_pids = {i.pid for i in infos}
        capture = Capture(scratch / f"{len(list(scratch.iterdir()))}-{cfg.hybrid.mode}.pcapng",
                          scan_processes(node_ports, head, actor_pids).listening)
        try:
            capture.start()
        except RuntimeError:
            inner.close()
            raise
        holder["pool"] = CapturingPool(inner, capture, lambda: scan_processes(node_ports, head, actor_pids))
        return holder["pool"]

    run_job(ctx, spec, pool_factory=factory)
    pool = holder["pool"]
    return WireJob(spec, pool, read_packets(pool.capture.path, pool.processes), placement, pool.capture.log)


def run(ctx: Context) -> str:
    if shutil.which("tshark") is None:
        return ("Not measured: `tshark` is not installed on this machine (Debian: `apt-get install tshark`, "
                "then run this section as root or as a member of the `wireshark` group). Nothing below is "
                "estimated in its place.")
    with tempfile.TemporaryDirectory(prefix="hes-wire-") as scratch:
        hybrid, backprop = _on_cluster(ctx, {}, [HYBRID_SPEC, BACKPROP_SPEC], Path(scratch))
        (quiet,) = _on_cluster(ctx, TASK_EVENTS_OFF, [HYBRID_SPEC], Path(scratch))
    return _render(hybrid, backprop, quiet)


def _per_round(job: WireJob, keep: Callable[[Stamp], bool]) -> dict[str, float]:
    """Mean bytes per kept round by traffic class, less the idle rate of that class over the round's window.

    A round's window runs from its start to the next round's start. Also: "payload" (the job's own count),
    "rounds", "seconds" (mean window) and, as "idle <class>", each class's idle rate in B/s.
    """
    stamps, packets = job.pool.stamps, job.packets
    idle_lo, idle_hi = job.pool.idle
    idle_rate = {k: v / (idle_hi - idle_lo) for k, v in packets.sums(idle_lo, idle_hi).items()}
    total: dict[str, float] = defaultdict(float)
    n = 0
    for i, s in enumerate(stamps):
        if not keep(s):
            continue
        hi = stamps[i + 1].start if i + 1 < len(stamps) else s.end
        for k, v in packets.sums(s.start, hi).items():
            total[k] += v - idle_rate[k] * (hi - s.start)
        total["payload"] += s.payload
        total["seconds"] += hi - s.start
        n += 1
    out = {k: v / n for k, v in total.items()} if n else {}
    out.update({f"idle {k}": v for k, v in idle_rate.items()})
    out["rounds"], out["idle seconds"] = n, idle_hi - idle_lo
    return out


def _seed_rounds(s: Stamp) -> bool:
    return s.kind == RoundKind.STOCHASTIC and s.decision == DecisionKind.SEED


def _render(hybrid: WireJob, backprop: WireJob, quiet: WireJob) -> str:
    stochastic = _per_round(hybrid, _seed_rounds)
    full = _per_round(backprop, lambda s: s.kind == RoundKind.FULL and s.decision == DecisionKind.GRAD)
    stochastic_quiet = _per_round(quiet, _seed_rounds)
    rows = []
    for label, job, m in (("stochastic (seeds only)", hybrid, stochastic),
                          ("stochastic, all Ray task events off", quiet, stochastic_quiet),
                          ("full (gradients up and down)", backprop, full)):
        rows.append([label, code(job.spec.hes_command()), int(m["rounds"]), ms(m["seconds"]), num(m["payload"]),
                     num(m["inter-node"]), num(m["inter-node TCP payload"]),
                     f"{ratio(m['inter-node'], m['payload']):.2f}x", num((m["inter-node"] - m["payload"]) / WORKERS),
                     num(m["all"]), num(m["idle inter-node"]), f"{m['idle seconds']:.1f}"])
    pairs = sorted({c for j in (hybrid, backprop) for c in j.packets.classes if c not in (SAME_NODE, UNATTRIBUTED)},
                   key=lambda c: -full.get(c, 0.0))
    breakdown = [[c, num(stochastic.get(c, 0.0)), num(full.get(c, 0.0)),
                  num(stochastic.get(f"idle {c}", 0.0)), num(full.get(f"idle {c}", 0.0))] for c in pairs]
    call = "coordinator - worker actor"
    call_bytes = stochastic.get(call, 0.0)
    unattributed = sum(float(j.packets.frame[j.packets.cls == j.packets.classes.index(UNATTRIBUTED)].sum())
                       for j in (hybrid, backprop, quiet))
    everything = sum(float(j.packets.frame.sum()) for j in (hybrid, backprop, quiet))
    tshark = "; ".join(line.strip() for j in (hybrid, backprop, quiet) for line in j.log.splitlines()
                       if "captured" in line or "dropped" in line)
    return "\n".join([
        f"`ray.cluster_utils.Cluster` on this machine: a head node with no CPUs (the coordinator, this process) "
        f"and {WORKERS} worker nodes of 1 CPU; the worker actors ran on: {', '.join(hybrid.placement)} "
        f"(hybrid job), {', '.join(quiet.placement)} (hybrid job, all task events off) and "
        f"{', '.join(backprop.placement)} (backprop job). tshark captured on `lo` the TCP ports "
        "that this process and the Ray processes it started listen on (other users' clusters on this machine "
        "are left out), from the first round to the end of an idle baseline as long as the job's rounds "
        "(actors alive, no rounds). A round's window runs from its start to the next round's start; each "
        "traffic class's idle rate times the window's length is subtracted. \"Inter-node\" counts packets whose "
        "two endpoints belong to processes on different nodes (ports mapped to processes and processes to "
        "nodes from /proc): what a real network would carry. Bytes are loopback frames (14 B pseudo-Ethernet + "
        "IP + TCP headers + payload); the loopback MTU is 65,536, so a real 1,500-byte-MTU network would add "
        "more header bytes to the full rounds' large transfers. Payload is the job's own byte count for the "
        "same rounds (all workers, both directions).",
        "",
        table(["round kind", "job", "rounds", "mean window", "payload B / round", "inter-node wire B / round",
               "of which TCP payload", "wire / payload", "Ray's extra B / round / worker",
               "all cluster loopback B / round", "idle inter-node B/s", "idle s"], rows),
        "",
        f"- Per stochastic round Ray moved {num(stochastic['inter-node'])} B between nodes for "
        f"{num(stochastic['payload'])} B of payload; the task calls alone (`{call}`) were "
        f"{num(call_bytes)} B, i.e. {num((call_bytes - stochastic['payload']) / WORKERS)} "
        "B of gRPC and task framing per worker per round around the seeds.",
        "- The round calls send Ray no task events (`WorkerActor.step` is declared with "
        "`enable_task_events=False`); with task-event reporting off for the whole cluster as well (the Cluster "
        f"started with `_system_config={TASK_EVENTS_OFF}`), a stochastic round moved "
        f"{num(stochastic_quiet['inter-node'])} B between nodes instead of "
        f"{num(stochastic['inter-node'])} B; `GCS - worker actor` traffic went from "
        f"{num(stochastic.get('GCS - worker actor', 0.0))} to {num(stochastic_quiet.get('GCS - worker actor', 0.0))} "
        "B per round.",
        f"- On the wire a stochastic round costs {100 * ratio(stochastic['inter-node'], full['inter-node']):.3f}% of "
        f"a full round of this MLP (payload alone: {100 * ratio(stochastic['payload'], full['payload']):.4f}%). The "
        "framing is fixed per call, so for smaller models it weighs more against a full round.",
        "",
        "Inter-node bytes per round by the pair of processes at the two ends (idle rate subtracted; the idle "
        "rates in B/s beside them; a negative figure means that class was quieter during the rounds than idle):",
        "",
        table(["endpoints", "stochastic B / round", "full B / round", "idle B/s (hybrid job)",
               "idle B/s (backprop job)"], breakdown),
        "",
        f"Stochastic rounds are those whose task carries a chosen seed (the rounds right after a full one carry "
        f"its gradient down and are left out); full rounds are the backprop job's rounds after its first. "
        f"Bytes with an endpoint not mapped to a process: {num(unattributed)} of {num(everything)} captured. "
        f"tshark reported: {tshark or 'nothing'}.",
    ])
