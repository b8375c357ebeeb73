"""The README's shell commands, run as a newcomer runs them, in a scratch folder beside the checkout.

Every command of README.md's sh/bash/console blocks either runs here (`hes train` for one epoch, the service's
commands against a real `hes serve` on a free port, the demo's module) and must end with exit 0 and the output the
README promises, or matches an entry of NOT_RUN with the reason. A command that is neither fails the test, so a new
README command is covered or consciously left out.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console|shell)\s*$")
PLACEHOLDER = re.compile(r"\b(?:JOB_ID|ID)\b|<id>")

# (pattern on a command as written, why this test does not run it)
NOT_RUN: list[tuple[str, str]] = [
    (r"^make test\b", "runs the suite this test belongs to"),
    (r"^make (\.venv|lint)\b", "builds the environment this test runs in; CI runs make lint (.ci/run)"),
    (r"^make (bench|chaos|gpu-check)\b", "benchmarks of an hour and more on MNIST; they write BENCHMARKS.md"),
    (r"^make net-(up|down)\b", "needs root and network namespaces; the network tests build their own"),
    (r"HES_MNIST_DIR", "needs MNIST, which the repository does not ship"),
    (r"--config (paper-[\w-]+|seedonly-r4|noniid-r4|finetune-zo)\b", "an MNIST preset: needs MNIST"),
    (r"resnet_mnist", "trains on MNIST"),
    (r"^docker\b|^kubectl\b|^ray (up|start|submit)\b", "needs a container runtime or a cluster"),
    (r"cluster\.workers=[3-9]", "more worker actors than the 2 CPUs a test machine has"),
]

@dataclass
class Command:
    text: str
    line: int

    def not_run(self) -> str | None:
        for pattern, reason in NOT_RUN:
            if re.search(pattern, self.text):
                return reason
        return None


def readme_commands(text: str) -> list[Command]:
    """The commands of the README's shell blocks: prompts and trailing comments dropped, `;` lists split."""
    out: list[Command] = []
    in_block = False
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("```"):
            in_block = not in_block and bool(SHELL_BLOCK.match(raw))
            continue
        if not in_block:
            continue
        for part in _split_semicolons(_strip_comment(raw.strip().removeprefix("$ "))):
            if part.strip():
                out.append(Command(part.strip(), n))
    return out


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _split_semicolons(code: str) -> list[str]:
    parts, quote, start = [], None, 0
    for i, ch in enumerate(code):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            parts.append(code[start:i])
            start = i + 1
    return [*parts, code[start:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Newcomer:
    """A shell in a scratch folder that sees the checkout's files (.venv, examples/, ...) but writes its own runs/."""
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    job_ids: list[str] = field(default_factory=list)

    def expand(self, cmd: str) -> str:
        cmd = re.sub(r"(?<=[:= ])8000\b", str(self.port), cmd)
        if self.job_ids:
            cmd = PLACEHOLDER.sub(self.job_ids[-1], cmd)
        return cmd

    def shell(self, cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", cmd], cwd=self.home, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def export(self, cmd: str) -> None:
        name = cmd.split()[1].split("=", 1)[0]
        done = self.shell(f'{cmd}; printf %s "${name}"')
        assert done.returncode == 0, done.stderr
        self.env[name] = done.stdout

    def serve(self, cmd: str) -> None:
        assert self.server is None, "the README starts hes serve twice"
        log = (self.home / "serve.log").open("wb")
        self.server = subprocess.Popen(["bash", "-c", "exec " + cmd.rstrip("& ")], cwd=self.home, env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env["HES_SERVER"] = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.env['HES_SERVER']}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.server.poll() is None and time.monotonic() < deadline, \
                (self.home / "serve.log").read_text()[-3000:]
            time.sleep(0.3)

    def running_job(self) -> str:
        """A job that is still running, for the README's `hes stop ID` (the watched one has ended)."""
        headers = {"Authorization": f"Bearer {self.env['HES_API_TOKEN']}"} if self.env.get("HES_API_TOKEN") else {}
        config = {"name": "readme-stop", "data": {"dataset": "digits"}, "train": {"epochs": 500, "batch_size": 100},
                  "cluster": {"workers": 1}}
        r = httpx.post(f"{self.env['HES_SERVER']}/v1/jobs", json=config, headers=headers, timeout=30)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


@pytest.fixture()
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git"):
            (tmp_path / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HES_") and k != "RAY_ADDRESS"}
    env.update(HES_STATE_DIR=str(tmp_path / "state"), HES_RAY_NUM_CPUS="2", PYTHONUNBUFFERED="1")
    user = Newcomer(tmp_path, env)
    yield user
    user.close()


def run(user: Newcomer, command: Command) -> None:
    """Run one README command; assert its exit status and the output the README promises."""
    cmd = user.expand(command.text)
    words = cmd.split()
    where = f"README.md:{command.line}: {command.text}"
    if words[0] == "export":
        user.export(cmd)
        return
    if words[:2] == ["make", "demo"]:
        done = subprocess.run([sys.executable, "-m", "service.demo"], cwd=user.home, env=user.env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr[-3000:]}"
        for promised in (r"reached\s+dev \d+\.\d+%", r"moved\s+\d+ B per worker in a seed-only round",
                         r"try next", r"status SUCCEEDED", r"service stopped"):
            assert re.search(promised, done.stdout), f"{where}: no {promised!r} in\n{done.stdout}"
        return
    hes = next((i for i, w in enumerate(words) if w.endswith("hes")), None)
    verb = words[hes + 1] if hes is not None and hes + 1 < len(words) else None
    if verb == "serve":
        user.serve(cmd)
        return
    if verb == "stop":
        cmd = cmd.replace(user.job_ids[-1], user.running_job()) if user.job_ids else cmd
    if verb == "train" and "--resume" not in words:
        cmd += " --set train.epochs=1"  # one epoch: the command's path, not its accuracy
    done = user.shell(cmd)
    out = done.stdout
    assert done.returncode == 0, f"{where}\nexit {done.returncode}\n{out[-3000:]}\n{done.stderr[-3000:]}"
    promised = {
        "presets": r"digits-demo",
        "train": r"status (SUCCEEDED|STOPPED)",
        "submit": r"submitted job \w+",
        "list": r"\d+ of \d+ jobs",
        "status": r"progress: round \d+/\d+",
        "watch": r"status (SUCCEEDED|STOPPED)",
        "stop": r"job \w+: (\w+ stop requested|STOPPED)",
        "report": r"\.png",
    }.get(verb or "", r"hes_" if words[0] == "curl" else r"")
    assert re.search(promised, out), f"{where}: no {promised!r} in\n{out[-3000:]}"
    if verb == "submit":
        user.job_ids.append(re.search(r"submitted job (\w+)", out).group(1))  # type: ignore[union-attr]
        if "--watch" in words:
            assert re.search(r"status SUCCEEDED", out), f"{where}: the watched job did not succeed\n{out}"


def test_parser_reads_blocks_comments_and_lists() -> None:
    text = "\n".join(["text", "```sh", "make demo    # a comment", "a x;  b 'y;z'  # c", "```", "```yaml",
                      "k: v", "```", "```bash", "$ hes list", "```"])
    assert [c.text for c in readme_commands(text)] == ["make demo", "a x", "b 'y;z'", "hes list"]


def test_every_readme_command_is_run_or_listed() -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    assert any(c.text.startswith("make demo") for c in commands), "the README lost its first command"
    unknown = [c for c in commands if c.not_run() is None and not re.match(
        r"^(make demo|export |curl |(\.venv/bin/)?hes )", c.text)]
    assert not unknown, f"README commands neither run by tests/test_readme.py nor in its NOT_RUN: {unknown}"


@pytest.mark.slow
def test_readme_commands_run(newcomer: Newcomer) -> None:
    commands = [c for c in readme_commands((ROOT / "README.md").read_text()) if c.not_run() is None]
    assert len(commands) >= 8, f"only {len(commands)} README commands can run here"
    for command in commands:
        run(newcomer, command)
