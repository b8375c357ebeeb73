"""A multi-host Ray cluster on one Linux machine: hosts are network namespaces on a bridge, links limited with tc tbf.

    make net-up HOSTS=4 LINK=100mbit      (python deploy/netlab.py up --hosts 4 --link 100mbit; needs root)
    python deploy/netlab.py exec 1 -- hes train --config paper-hes-r2 --set cluster.address=10.254.0.1:6390
    python deploy/netlab.py bytes         (each host's link bytes, from the kernel's counters)
    make net-down

Host i is namespace <prefix>-h<i> with address <subnet>.<i>/24 on its veth eth0 (every host's interface has that
name, as on real machines: GLOO_SOCKET_IFNAME=eth0 fits all); the other end, <prefix>s<i>, sits on bridge br0
inside namespace <prefix>-sw, so nothing touches the machine's own namespace.
Each end's egress is shaped (tc tbf), which limits the host's link in both directions. Host 1 runs the Ray head
(token auth, no worker CPUs) and `hes serve`; hosts 2..R run `ray start` worker nodes. Teardown ends exactly the
processes inside these namespaces (by PID, from `ip netns pids`) and deletes them: never Ray's machine-wide stop
command, which would stop every Ray on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RAY_PORT = 6390
API_PORT = 8000
HOST_DEVICE = "eth0"  # each host's end of its link
RATE = re.compile(r"^(none|\d+(\.\d+)?(bit|kbit|mbit|gbit))$")


class LabError(RuntimeError):
    """The sandbox cannot be made or used here; the message says why in one line."""


@dataclass(frozen=True)
class LinkBytes:
    """Bytes a host has sent and received on its link since the link was made (the kernel's counters)."""
    tx: int
    rx: int


@dataclass(frozen=True)
class Lab:
    """One sandbox: its names, addresses, link rate, and where its tokens and Ray temp dirs live."""
    prefix: str = "hes"
    subnet: str = "10.254.0"  # host i is <subnet>.i/24
    hosts: int = 4
    link: str = "100mbit"  # tc rate of every host link, both directions; "none": unlimited
    ray_hosts: int = 0  # hosts 1..ray_hosts run Ray (0: all); the others are bare hosts on the bridge
    worker_cpus: int = 1
    object_store_bytes: int = 400_000_000
    serve: bool = True  # run `hes serve` on host 1
    venv: str = str(Path(sys.executable).parent.parent)

    @property
    def state(self) -> Path:
        """Tokens, Ray temp dirs, the service's state and logs; removed at teardown."""
        return Path(f"/tmp/{self.prefix}-lab")

    def host(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def ip(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    @property
    def ray_address(self) -> str:
        return f"{self.ip(1)}:{RAY_PORT}"

    @property
    def api_url(self) -> str:
        return f"http://{self.ip(1)}:{API_PORT}"

    def token(self, name: str) -> str:
        """The Ray or API token (name "ray" or "api") made by `up`."""
        return (self.state / f"{name}_token").read_text().strip()

    def env(self, ray_token: bool = True) -> dict[str, str]:
        """An environment for commands on a host: the venv first on PATH, Ray token auth on (or off)."""
        env = dict(os.environ, PATH=f"{self.venv}/bin:{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        if ray_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token("ray"), HES_API_TOKEN=self.token("api"))
        else:
            env["RAY_AUTH_MODE"] = "disabled"
            for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "HES_API_TOKEN"):
                env.pop(key, None)
        return env

    def run(self, i: int, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command on host i (inside its namespace) and wait for it."""
        return sh("ip", "netns", "exec", self.host(i), *args, env=env or self.env(), timeout=timeout, check=check)

    def popen(self, i: int, *args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a command on host i in the background, its output going to `log`."""
        with open(log, "ab") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.host(i), *args], env=env or self.env(),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def link_ends(self, i: int) -> list[tuple[str, str]]:
        """(namespace, device) of host i's link: the host's end and the switch's end."""
        return [(self.host(i), HOST_DEVICE), (f"{self.prefix}-sw", f"{self.prefix}s{i}")]

    def link_bytes(self, i: int) -> LinkBytes:
        ns, dev = self.link_ends(i)[0]
        stats = json.loads(sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout)[0]["stats64"]
        return LinkBytes(tx=int(stats["tx"]["bytes"]), rx=int(stats["rx"]["bytes"]))

    def set_rate(self, i: int, rate: str) -> None:
        """Limit host i's link to `rate` in both directions ("none": no limit)."""
        check_rate(rate)
        for ns, dev in self.link_ends(i):
            sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            if rate != "none":
                # The bucket holds at least 10 ms at the rate (a smaller one caps fast links below their rate).
                burst = max(64 * 1024, rate_bits(rate) // 8 // 100)
                sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                   "burst", str(burst), "latency", "200ms")

    def set_link(self, i: int, up: bool) -> None:
        """Cut host i's link (both ends down) or restore it."""
        for ns, dev in self.link_ends(i):
            sh("ip", "-n", ns, "link", "set", "dev", dev, "up" if up else "down")


def sh(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(args[:6])} took more than {timeout:.0f} s") from e
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(args[:6])}: {(done.stderr or done.stdout).strip()[-400:]}")
    return done


def check_rate(rate: str) -> None:
    if not RATE.match(rate):
        raise LabError(f"link rate {rate!r}: give a tc rate such as 10mbit, 100mbit, 1gbit, or none")


def rate_bits(rate: str) -> int:
    """Bits per second of a tc rate such as 100mbit (0 for none)."""
    check_rate(rate)
    if rate == "none":
        return 0
    number, unit = re.match(r"([\d.]+)(\w+)", rate).groups()  # type: ignore[union-attr]
    return int(float(number) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[unit])


def why_not_usable() -> str | None:
    """Why this machine cannot make network namespaces (not root, no `ip netns`, no tc), or None."""
    if os.geteuid() != 0:
        return "network sandbox needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"network sandbox needs the `{tool}` command (iproute2)"
    probe = f"hesprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"no network namespaces here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def namespaces(prefix: str) -> list[str]:
    """This sandbox's namespaces (hosts and switch), found by name so teardown needs no saved state."""
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    return [n for n in names if re.fullmatch(rf"{re.escape(prefix)}-(h\d+|sw)", n)]


def up(lab: Lab) -> None:
    """Make the hosts, the bridge and the links, then start Ray and `hes serve`. Any earlier sandbox of the same
    prefix is torn down first; on failure this one is torn down too, and LabError says why."""
    if lab.hosts < 2:
        raise LabError(f"hosts: {lab.hosts}; a cluster needs at least 2 (the head and one worker host)")
    check_rate(lab.link)
    why = why_not_usable()
    if why:
        raise LabError(why)
    down(lab.prefix)
    try:
        lab.state.mkdir(parents=True)
        lab.state.chmod(0o700)
        for name in ("ray", "api"):
            (lab.state / f"{name}_token").write_text(secrets.token_hex(32) + "\n")
        (lab.state / "lab.json").write_text(json.dumps(asdict(lab), indent=1) + "\n")
        make_network(lab)
        start_ray(lab)
        if lab.serve:
            start_serve(lab)
    except BaseException:
        down(lab.prefix)
        raise


def make_network(lab: Lab) -> None:
    sw = f"{lab.prefix}-sw"
    sh("ip", "netns", "add", sw)
    sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "br0", "up")
    for i in range(1, lab.hosts + 1):
        (hns, hdev), (_, sdev) = lab.link_ends(i)
        sh("ip", "netns", "add", hns)
        sh("ip", "-n", hns, "link", "add", hdev, "type", "veth", "peer", "name", sdev, "netns", sw)
        sh("ip", "-n", sw, "link", "set", sdev, "master", "br0", "up")
        sh("ip", "-n", hns, "addr", "add", f"{lab.ip(i)}/24", "dev", hdev)
        sh("ip", "-n", hns, "link", "set", hdev, "up")
        sh("ip", "-n", hns, "link", "set", "lo", "up")
        lab.set_rate(i, lab.link)


def start_ray(lab: Lab) -> None:
    lab.run(1, f"{lab.venv}/bin/ray", "start", "--head", f"--node-ip-address={lab.ip(1)}", f"--port={RAY_PORT}",
            "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={lab.state}/ray-h1", *ray_common(lab),
            timeout=180)
    for i in range(2, (lab.ray_hosts or lab.hosts) + 1):
        start_worker_node(lab, i)


def ray_common(lab: Lab) -> list[str]:
    return [f"--object-store-memory={lab.object_store_bytes}", "--disable-usage-stats"]


def start_worker_node(lab: Lab, i: int) -> None:
    lab.run(i, f"{lab.venv}/bin/ray", "start", f"--address={lab.ray_address}", f"--node-ip-address={lab.ip(i)}",
            f"--num-cpus={lab.worker_cpus}", f"--temp-dir={lab.state}/ray-h{i}", *ray_common(lab), timeout=180)


def rejoin(lab: Lab) -> list[int]:
    """Restart the Ray worker node of every Ray host the head no longer counts alive (Ray ends a raylet it has
    declared dead, for instance after its link was cut too long); the hosts restarted."""
    alive = set(healthy(lab)["ips"])  # type: ignore[call-overload]
    lost = [i for i in range(2, (lab.ray_hosts or lab.hosts) + 1) if lab.ip(i) not in alive]
    for i in lost:
        end_processes([lab.host(i)])
        start_worker_node(lab, i)
    return lost


def start_serve(lab: Lab, wait: float = 120) -> None:
    """`hes serve` on host 1, listening on its address, joined to the cluster through HES_RAY_ADDRESS."""
    env = lab.env() | {"HES_HOST": lab.ip(1), "HES_PORT": str(API_PORT), "HES_RAY_ADDRESS": lab.ray_address,
                       "HES_STATE_DIR": str(lab.state / "serve")}
    proc = lab.popen(1, f"{lab.venv}/bin/hes", "serve", log=lab.state / "serve.log", env=env)
    probe = ("import httpx,sys\ntry: print(httpx.get(sys.argv[1] + '/healthz', timeout=3).status_code)\n"
             "except httpx.HTTPError: print(0)")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (lab.state / "serve.log").read_text()[-400:]
            raise LabError(f"hes serve on {lab.host(1)} exited with {proc.returncode}: {log}")
        if lab.run(1, f"{lab.venv}/bin/python", "-c", probe, lab.api_url).stdout.strip() == "200":
            return
        time.sleep(1)
    raise LabError(f"hes serve on {lab.host(1)} did not answer {lab.api_url}/healthz within {wait:.0f} s")


def down(prefix: str = "hes", grace: float = 5.0) -> None:
    """End every process inside this sandbox's namespaces (SIGTERM, then SIGKILL after `grace` seconds), delete
    the namespaces and the state folder. Processes outside them are never touched."""
    names = namespaces(prefix)
    end_processes(names, grace)
    for name in names:
        sh("ip", "netns", "del", name, check=False)
    shutil.rmtree(f"/tmp/{prefix}-lab", ignore_errors=True)


def end_processes(names: list[str], grace: float = 5.0) -> None:
    """SIGTERM every process inside these namespaces, SIGKILL what is left after `grace` seconds."""
    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        while True:
            pids = [int(p) for n in names for p in sh("ip", "netns", "pids", n, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGTERM and time.monotonic() > deadline:
                break
            time.sleep(0.5)


def load(prefix: str = "hes") -> Lab:
    """The sandbox `up` made with this prefix (from its lab.json)."""
    path = Path(f"/tmp/{prefix}-lab/lab.json")
    if not path.is_file():
        raise LabError(f"no sandbox {prefix!r} is up (no {path}); run `make net-up` first")
    return Lab(**json.loads(path.read_text()))


def healthy(lab: Lab) -> dict[str, object]:
    """The cluster as host 1's Ray sees it: alive nodes, their addresses and CPUs."""
    probe = ("import json,sys\nimport ray\nray.init(address=sys.argv[1], log_to_driver=False)\n"
             "alive = [n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]\n"
             "print(json.dumps({'nodes': len(alive), 'ips': alive, "
             "'cpus': ray.cluster_resources().get('CPU', 0)}))")
    out = lab.run(1, f"{lab.venv}/bin/python", "-c", probe, lab.ray_address, timeout=60).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netlab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prefix", default="hes", help="names of the namespaces (<prefix>-h1 ...); default hes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="make the hosts and start Ray and hes serve")
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--link", default="100mbit", help="tc rate of each host link, e.g. 10mbit, 1gbit, none")
    p.add_argument("--subnet", default="10.254.0", help="first three octets; host i is <subnet>.i")
    p.add_argument("--worker-cpus", type=int, default=1)
    p.add_argument("--no-serve", action="store_true", help="do not start hes serve on host 1")
    sub.add_parser("down", help="end the sandbox's processes and delete its namespaces")
    sub.add_parser("bytes", help="each host's link bytes (kernel counters)")
    sub.add_parser("rejoin", help="restart the Ray worker nodes the head no longer counts alive")
    sub.add_parser("status", help="hosts, addresses, alive Ray nodes")
    p = sub.add_parser("link", help="set a host's link rate, or cut and restore it")
    p.add_argument("host", type=int)
    p.add_argument("state", help="a tc rate (10mbit, none), or up/down")
    p = sub.add_parser("exec", help="run a command on a host with the cluster's tokens in its environment")
    p.add_argument("host", type=int)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            lab = Lab(prefix=args.prefix, subnet=args.subnet, hosts=args.hosts, link=args.link,
                      worker_cpus=args.worker_cpus, serve=not args.no_serve)
            up(lab)
            describe(lab)
        elif args.cmd == "down":
            down(args.prefix)
        elif args.cmd == "exec":
            lab = load(args.prefix)
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return subprocess.call(["ip", "netns", "exec", lab.host(args.host), *command], env=lab.env())
        else:
            lab = load(args.prefix)
            if args.cmd == "bytes":
                for i in range(1, lab.hosts + 1):
                    b = lab.link_bytes(i)
                    print(f"{lab.host(i)} {lab.ip(i)}: tx {b.tx} rx {b.rx}")
            elif args.cmd == "rejoin":
                print(f"restarted Ray on hosts {rejoin(lab) or 'none'}")
            elif args.cmd == "link":
                if args.state in ("up", "down"):
                    lab.set_link(args.host, args.state == "up")
                else:
                    lab.set_rate(args.host, args.state)
            else:
                describe(lab)
                print(f"Ray: {healthy(lab)}")
    except LabError as e:
        print(f"netlab: {e}", file=sys.stderr)
        return 1
    return 0


def describe(lab: Lab) -> None:
    ray_hosts = lab.ray_hosts or lab.hosts
    for i in range(1, lab.hosts + 1):
        role = "Ray head (0 CPUs), hes serve" if i == 1 else (
            f"Ray worker node ({lab.worker_cpus} CPU)" if i <= ray_hosts else "no Ray")
        print(f"{lab.host(i)}  {lab.ip(i)}  link {lab.link}  {role}")
    print(f"Ray address {lab.ray_address} (token auth), API {lab.api_url} (tokens in {lab.state})")
    print(f"run a job:  {lab.venv}/bin/python deploy/netlab.py exec 1 -- hes train --config paper-hes-r2 "
          f"--set cluster.address={lab.ray_address}")


if __name__ == "__main__":
    sys.exit(main())
