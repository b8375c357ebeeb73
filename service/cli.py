"""The `hes` command line: `hes train` runs a job here; the other commands talk to `hes serve`.

    hes train --config paper-hes-r2 --set cluster.workers=2 --out runs/r2
    hes train --resume runs/r2
    hes presets
    hes serve --port 8000                 (then: hes submit digits-demo --watch, hes list, hes status ID,
                                           hes watch ID, hes stop ID; --server URL, $HES_API_TOKEN)
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.config import ConfigError, load_config, preset_names, validate_config
from coordinator.display import fmt_bytes
from coordinator.documents import JobResult, JobStatus

if TYPE_CHECKING:
    from service.client import Client
    from service.schemas import JobOut

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def summary_lines(result: JobResult) -> list[str]:
    f = result.final
    if not f:
        return [f"status {result.status}: {result.message}"]
    b, r = result.bytes, result.rounds

    def num(key: str) -> str:
        return "n/a" if f.get(key) is None else f"{f[key]:.4f}"

    return [
        f"status {result.status} {result.message}".rstrip(),
        f"accuracy: train {num('train_accuracy')}  dev {num('dev_accuracy')}  test {num('test_accuracy')}",
        f"loss: train {num('train_loss')}  dev {num('dev_loss')}",
        f"rounds: {r.full} full, {r.stochastic} stochastic; {result.num_parameters or 0:,} parameters, "
        f"{result.num_workers} workers",
        f"bytes: full {fmt_bytes(b.full.up)} up / {fmt_bytes(b.full.down)} down, stochastic "
        f"{fmt_bytes(b.stochastic.up)} up / {fmt_bytes(b.stochastic.down)} down, "
        f"sync {fmt_bytes(b.sync)}, total {fmt_bytes(b.total)}",
        f"seconds: {result.seconds.total:.1f}; replica checks {result.replica_checks.checked}, "
        f"mismatches {result.replica_checks.mismatches}",
    ]


def end_lines(job: JobOut) -> list[str]:
    """How a job of the service ended: its result's summary, or its status and message when it has none."""
    if job.result is not None:
        return summary_lines(job.result)
    return [f"status {job.status} {job.message}".rstrip()]


def exit_status(status: JobStatus) -> int:
    return 0 if status in (JobStatus.SUCCEEDED, JobStatus.STOPPED) else 1


@command
def cmd_train(args: argparse.Namespace) -> int:
    from coordinator.train import train

    try:
        if args.resume:
            extra = [flag for flag, given in (("--config", args.config), ("--set", args.set), ("--out", args.out))
                     if given]
            if extra:
                raise ConfigError(f"{', '.join(extra)}: not with --resume, which continues the job exactly as "
                                  f"configured in {Path(args.resume) / 'config.json'}")
            out = Path(args.resume)
            raw = json.loads((out / "config.json").read_text())
            cfg = validate_config(raw)
        else:
            if not args.out:
                raise ConfigError("--out: required unless --resume")
            cfg = load_config(args.config, args.set or [])
            out = Path(args.out)
    except (ConfigError, OSError, json.JSONDecodeError) as err:
        print(f"hes train: {err}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:
        print(f"hes train: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"hes train: {err}", file=sys.stderr)
        return 1
    for line in summary_lines(result):
        print(line)
    written = "result.json history.csv model.safetensors checkpoint.npz"
    if result.status == JobStatus.FAILED:
        written = "result.json error.log (no model)"
    print(f"outputs in {out}/: {written}")
    return exit_status(result.status)


@command
def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        print(name)
    return 0


@command
def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    given = {"host": args.host, "port": args.port, "state_dir": args.state_dir}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            print(f"hes serve: {where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}",
                  file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=10)
    return 0


def _client(args: argparse.Namespace) -> Client:
    from service.client import Client

    return Client(args.server)


def _print_end(job: JobOut) -> int:
    """Print how a job of the service ended; the exit status."""
    for line in end_lines(job):
        print(line)
    return exit_status(job.status)


def _service_call(name: str, fn: Callable[[], int]) -> int:
    from service.client import ServiceError

    try:
        return fn()
    except (ServiceError, ConfigError) as err:
        print(f"hes {name}: {err}", file=sys.stderr)
        return 2


@command
def cmd_submit(args: argparse.Namespace) -> int:
    from coordinator.config import apply_override, read_config_file
    from service.client import watch

    def run() -> int:
        raw = read_config_file(args.config)
        for assignment in args.set or []:
            apply_override(raw, assignment)
        client = _client(args)
        job = client.submit(raw)
        print(f"submitted job {job.id} ({job.name}): {client.server}/v1/jobs/{job.id}")
        return _print_end(watch(client, job.id)) if args.watch else 0

    return _service_call("submit", run)


@command
def cmd_status(args: argparse.Namespace) -> int:
    def run() -> int:
        job = _client(args).job(args.id)
        if args.json:
            print(job.model_dump_json(indent=2))
            return 0
        p = job.progress
        print(f"job {job.id} ({job.name}): {job.status} {job.message}".rstrip())
        print(f"progress: round {p.round}/{p.total_rounds}, epoch {p.epoch}/{p.epochs} ({100 * p.fraction:.1f}%)")
        if job.metrics:
            print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(job.metrics.items()) if v is not None))
        print(f"bytes: total {fmt_bytes(job.bytes.total)}")
        if job.restarts:
            print(f"restarts: {job.restarts} (from its checkpoint, after its coordinator died)")
        if job.result is not None:
            _print_end(job)
        return 0

    return _service_call("status", run)


@command
def cmd_watch(args: argparse.Namespace) -> int:
    from service.client import watch

    return _service_call("watch", lambda: _print_end(watch(_client(args), args.id)))


@command
def cmd_stop(args: argparse.Namespace) -> int:
    def run() -> int:
        job = _client(args).stop(args.id)
        print(f"job {job.id}: {job.status} {job.message}".rstrip())
        return 0

    return _service_call("stop", run)


@command
def cmd_list(args: argparse.Namespace) -> int:
    def run() -> int:
        page = _client(args).jobs(args.status, args.limit, args.offset)
        print(f"{'id':12}  {'name':24}  {'status':9}  {'progress':>8}  created")
        for j in page.jobs:
            print(f"{j.id:12}  {j.name[:24]:24}  {j.status:9}  {100 * j.progress.fraction:7.1f}%  {j.times.created}")
        print(f"{len(page.jobs)} of {page.total} jobs (offset {page.offset})")
        return 0

    return _service_call("list", run)


@command
def cmd_report(args: argparse.Namespace) -> int:
    from service.report import run

    return run(args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hes", description="Hybrid-ES training on Ray: train, serve, submit.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run one job here (in-process, or on Ray when cluster.workers >= 1)")
    p.add_argument("--config", help="YAML/JSON file or preset name (see `hes presets`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. hybrid.r=4")
    p.add_argument("--out", help="output folder")
    p.add_argument("--resume", metavar="DIR", help="continue the job whose outputs are in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("presets", help="list the shipped presets (paper Figs. 7 and 8)")
    p = sub.add_parser("report", help="PNG plots of a job's history: loss, accuracy, bytes per round and in all; "
                       "of several jobs: their accuracy and loss overlaid against epoch and bytes sent")
    p.add_argument("target", metavar="JOB_OR_DIR", nargs="+",
                   help="a job's output folder (or its history.csv), or a job id; several: overlaid")
    p.add_argument("--out", help="folder for the PNGs; default JOB_OR_DIR/report, or report-ID for a job id, "
                   "report-overlay for several")
    p.add_argument("--server", help="service URL for a job id; default $HES_SERVER or http://127.0.0.1:8000")
    add_service_parsers(sub)
    return ap


def add_service_parsers(sub: Any) -> None:
    """`hes serve` and the client commands (they take --server URL and read $HES_API_TOKEN)."""
    p = sub.add_parser("serve", help="run the REST service (FastAPI + uvicorn; settings from HES_* variables)")
    p.add_argument("--host", help="default $HES_HOST or 127.0.0.1; non-loopback needs HES_API_TOKEN")
    p.add_argument("--port", type=int, help="default $HES_PORT or 8000")
    p.add_argument("--state-dir", help="job store and job outputs; default $HES_STATE_DIR or ~/.hes")
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--server", help="service URL; default $HES_SERVER or http://127.0.0.1:8000")
    p = sub.add_parser("submit", parents=[client], help="submit a job config (file or preset) to the service")
    p.add_argument("config", help="YAML/JSON file or preset name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. hybrid.r=4")
    p.add_argument("--watch", action="store_true", help="then show its progress bar until it ends")
    p = sub.add_parser("status", parents=[client], help="show one job")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the whole job document")
    p = sub.add_parser("watch", parents=[client], help="progress bar until the job ends, then its result")
    p.add_argument("id")
    p = sub.add_parser("stop", parents=[client], help="stop a job (it keeps its last checkpoint)")
    p.add_argument("id")
    p = sub.add_parser("list", parents=[client], help="list jobs, newest first")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
