"""The `hes` command line: `hes train` runs a job here; the other commands talk to `hes serve`.

    hes train --config paper-hes-r2 --set cluster.workers=2 --out runs/r2
    hes train --resume runs/r2
    hes presets
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.config import ConfigError, load_config, preset_names, validate_config

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def summary_lines(result: dict[str, Any]) -> list[str]:
    if not result.get("final"):
        return [f"status {result['status']}: {result.get('message', '')}"]
    f, b, r = result["final"], result["bytes"], result["rounds"]
    return [
        f"status {result['status']} {result.get('message', '')}".rstrip(),
        f"accuracy: train {f['train_accuracy']:.4f}  dev {f['dev_accuracy']:.4f}  test {f['test_accuracy']:.4f}",
        f"loss: train {f['train_loss']:.4f}  dev {f['dev_loss']:.4f}",
        f"rounds: {r['full']} full, {r['stochastic']} stochastic; {result['num_parameters']:,} parameters, "
        f"{result['num_workers']} workers",
        f"bytes: full {fmt_bytes(b['full']['up'])} up / {fmt_bytes(b['full']['down'])} down, stochastic "
        f"{fmt_bytes(b['stochastic']['up'])} up / {fmt_bytes(b['stochastic']['down'])} down, "
        f"sync {fmt_bytes(b['sync'])}, total {fmt_bytes(b['total'])}",
        f"seconds: {result['seconds']['total']:.1f}; replica checks {result['replica_checks']['checked']}, "
        f"mismatches {result['replica_checks']['mismatches']}",
    ]


@command
def cmd_train(args: argparse.Namespace) -> int:
    from coordinator.train import train

    try:
        if args.resume:
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
    print(f"outputs in {out}/: result.json history.csv model.safetensors checkpoint.npz")
    return 0 if result["status"] in ("SUCCEEDED", "STOPPED") else 1


@command
def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        print(name)
    return 0


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
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
