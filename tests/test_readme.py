"""The README's shell commands, run as a newcomer runs them: each shell block as one bash script in a scratch folder.

Every command of README.md's sh/bash/console blocks either runs (in its block's order, so `hes serve ... &`, `$ID`
and `kill %1` work as written; `hes train` for one epoch; port 8000 replaced by a free one) and must end with exit 0
and the output the README promises, or matches an entry of NOT_RUN with the reason. A command that is neither fails
the test, so a new README command is covered or consciously left out. `make demo` runs its module.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.demo import free_port

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console|shell)\s*$")
MARK = "@@readme"
PLACEHOLDER = re.compile(r"\bID\b")  # a job's id in the README's commands
HES = re.compile(r"^(\.venv/bin/)?hes$")
SUBMITTED = "sed -n 's/^submitted job \\([0-9a-f]*\\).*/\\1/p'"  # the id `hes submit` prints
STILL_RUNNING = ".venv/bin/hes submit digits-demo --set train.epochs=2000"

# (pattern on a command as written, why this test does not run it)
NOT_RUN: list[tuple[str, str]] = [
    (r"^make test\b", "runs the suite this test belongs to"),
    (r"^make (\.venv|lint|docs)\b", "builds the environment this test runs in; CI runs make lint, a test the docs"),
    (r"^make (bench|chaos|gpu-check)\b", "benchmarks of an hour and more on MNIST; they write BENCHMARKS.md"),
    (r"^make net-(up|down)\b", "needs root and network namespaces; tests/deploy's network tests build their own"),
    (r"deploy/netlab\.py", "works on the sandbox of make net-up (root); tests/deploy/test_network.py covers it"),
    (r"HES_MNIST_DIR", "needs MNIST, which the repository does not ship"),
    (r"--config (paper-[\w-]+|seedonly-r4|noniid-r4|finetune-zo)\b", "an MNIST preset: needs MNIST"),
    (r"resnet_mnist", "trains on MNIST"),
    (r"^(docker|kubectl|ray)\b", "needs a container runtime or a cluster"),
    (r"cluster\.workers=[3-9]", "more worker actors than the 2 CPUs a test machine has"),
]
# what a command's output must show, by the hes verb it starts with
PROMISED = {
    "--help": r"usage: hes",
    "presets": r"digits-demo",
    "train": r"status (SUCCEEDED|STOPPED)",
    "submit": r"submitted job \w+",
    "list": r"\d+ of \d+ jobs",
    "status": r"progress: round \d+/\d+",
    "watch": r"status (SUCCEEDED|STOPPED)",
    "stop": r"job \w+: (\w+ stop requested|STOPPED)",
    "report": r"\.png",
}


@dataclass(frozen=True)
class Command:
    text: str  # as written, without its trailing comment
    line: int
    block: int

    def not_run(self) -> str | None:
        return next((reason for pattern, reason in NOT_RUN if re.search(pattern, self.text)), None)

    def promise(self) -> str:
        words = self.text.split()
        if words[0] == "curl" and "|" in self.text:
            return r"hes_"
        if HES.match(words[0]) and len(words) > 1:
            return r"status SUCCEEDED" if words[1] == "submit" and "--watch" in words else PROMISED.get(words[1], "")
        return ""


def readme_commands(text: str) -> list[Command]:
    """The commands of the README's shell blocks, a line each: prompts and trailing comments dropped."""
    out: list[Command] = []
    block, in_block = 0, False
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("```"):
            in_block = not in_block and bool(SHELL_BLOCK.match(raw))
            block += in_block
            continue
        if in_block and (code := strip_comment(raw.strip().removeprefix("$ "))):
            out.append(Command(code, n, block))
    return out


def strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def as_run(command: Command, port: int) -> str:
    """The command as this test runs it: a free port for 8000, the last submitted job's id for ID, and
    `hes train` for one epoch."""
    cmd = re.sub(r"(?<=[:= ])8000\b", str(port), command.text)
    cmd = PLACEHOLDER.sub('"$ID"', cmd)
    words = cmd.split()
    if HES.match(words[0]) and words[1:2] == ["train"] and "--resume" not in words:
        cmd += " --set train.epochs=1"  # the command's path, not its accuracy
    return cmd


def script(commands: list[Command], port: int) -> str:
    """One bash script: each command, then a marker line with its exit status (the output between markers is
    its stdout and stderr). A command sent to the background writes to a log of its own; `ID` is the id that the
    last `hes submit` printed; `hes stop ID` stops a job submitted for it, since the watched one has ended."""
    lines = [f"export HES_SERVER=http://127.0.0.1:{port}"]  # the client's default server, on the free port
    for i, c in enumerate(commands):
        cmd = as_run(c, port)
        verb = cmd.split()[1:2] if HES.match(cmd.split()[0]) else []
        if cmd.endswith("&"):
            cmd = f"{cmd[:-1].rstrip()} >> background-{i}.log 2>&1 &"
        else:
            cmd = f"{{ {cmd}; }} > out-{i}.txt 2>&1"
        if verb == ["stop"]:
            lines.append(f"{STILL_RUNNING} > running.txt 2>&1 && ID=$({SUBMITTED} running.txt)")
        lines += [cmd, f"status=$?; cat out-{i}.txt 2>/dev/null", f'echo "{MARK} {i} $status"']
        if verb == ["serve"]:  # a user waits for it to come up before the next command; at most two minutes
            lines.append(f"for _ in $(seq 240); do curl -sf 127.0.0.1:{port}/healthz > /dev/null && break; "
                         "sleep 0.5; done")
        if verb == ["submit"]:
            lines.append(f"ID=$({SUBMITTED} out-{i}.txt)")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Outcome:
    status: int
    output: str


def run_block(commands: list[Command], home: Path, env: dict[str, str]) -> list[Outcome]:
    """Run the block in its own process group (a `hes serve &` in it is ended with the group); each command's
    exit status and output."""
    proc = subprocess.Popen(["bash", "-c", script(commands, free_port())], cwd=home, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "timed out"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    outcomes: list[Outcome] = []
    output: list[str] = []
    for line in stdout.splitlines():
        if line.startswith(MARK):
            outcomes.append(Outcome(int(line.split()[2]), "\n".join(output)))
            output = []
        else:
            output.append(line)
    assert len(outcomes) == len(commands), (
        f"the block of README.md:{commands[0].line} stopped after {len(outcomes)} of {len(commands)} commands\n"
        f"{stdout[-3000:]}\n{stderr[-3000:]}")
    return outcomes


@pytest.fixture()
def newcomer(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch folder that sees the checkout's files (.venv, examples/, ...) but keeps its own runs/ and state."""
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git"):
            (tmp_path / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HES_") and k != "RAY_ADDRESS"}
    env.update(HES_STATE_DIR=str(tmp_path / "state"), HES_RAY_NUM_CPUS="2", PYTHONUNBUFFERED="1")
    yield tmp_path, env


def test_parser_reads_blocks_and_drops_comments() -> None:
    text = "\n".join(["text", "```sh", "make demo    # a comment", "a 'x # y'  # c", "```", "```yaml",
                      "k: v", "```", "```bash", "$ hes list", "```"])
    assert [(c.text, c.block) for c in readme_commands(text)] == [("make demo", 1), ("a 'x # y'", 1),
                                                                  ("hes list", 2)]


def test_a_failing_command_is_reported(newcomer: tuple[Path, dict[str, str]]) -> None:
    commands = [Command("true", 1, 1), Command("false", 2, 1), Command("echo done", 3, 1)]
    assert [o.status for o in run_block(commands, *newcomer)] == [0, 1, 0]


def test_every_readme_command_is_run_or_listed() -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    assert commands and commands[0].text.startswith("make demo"), "the README no longer opens with make demo"
    runnable = re.compile(r"^(make demo|export |curl |(\.venv/bin/)?hes )")
    unknown = [c for c in commands if c.not_run() is None and not runnable.match(c.text)]
    assert not unknown, f"README commands neither run by tests/test_readme.py nor in its NOT_RUN: {unknown}"


def test_make_demo(newcomer: tuple[Path, dict[str, str]]) -> None:
    home, env = newcomer
    done = subprocess.run([sys.executable, "-m", "service.demo"], cwd=home, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}"
    for promised in (r"reached\s+dev \d+\.\d+%", r"moved\s+\d+ B per worker in a seed-only round", r"try next",
                     r"status SUCCEEDED", r"service stopped"):
        assert re.search(promised, done.stdout), f"no {promised!r} in\n{done.stdout}"


def runnable_blocks() -> dict[int, list[Command]]:
    """The README's shell blocks with a command this test runs (make demo has a test of its own)."""
    blocks: dict[int, list[Command]] = {}
    for c in readme_commands((ROOT / "README.md").read_text()):
        if c.not_run() is None and not c.text.startswith("make demo"):
            blocks.setdefault(c.block, []).append(c)
    return blocks


def test_enough_commands_run() -> None:
    assert sum(map(len, runnable_blocks().values())) >= 10, "too few README commands can run here"


@pytest.mark.slow
@pytest.mark.parametrize("block", sorted(runnable_blocks()))
def test_readme_block_runs(block: int, newcomer: tuple[Path, dict[str, str]]) -> None:
    commands = runnable_blocks()[block]
    for c, outcome in zip(commands, run_block(commands, *newcomer), strict=True):
        where = f"README.md:{c.line}: {c.text}"
        assert outcome.status == 0, f"{where}\nexit {outcome.status}\n{outcome.output[-3000:]}"
        assert re.search(c.promise(), outcome.output), f"{where}: no {c.promise()!r} in\n{outcome.output[-3000:]}"
