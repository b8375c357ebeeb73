"""BENCHMARKS.md's sections, each a block between `<!-- bench:KEY -->` and `<!-- /bench:KEY -->`, and the one
function that writes one (`make bench`, `make gpu-check` and `make chaos` all go through `write_section`)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

HEADER = """# BENCHMARKS

Written by `make bench` (`bench/run.py`) from the numbers it measured; every section says how it was run,
when, and on what. The machine is shared (2 cores, other engineers' test suites running), so timings
are compared only side by side within one run, as medians and ratios.
"""
BLOCK = re.compile(r"<!-- bench:([\w-]+) -->\n.*?<!-- /bench:\1 -->\n", re.DOTALL)


def wrap(key: str, text: str) -> str:
    """`text` as the block of section `key`."""
    return f"<!-- bench:{key} -->\n{text}\n<!-- /bench:{key} -->\n"


def with_section(text: str, key: str, block: str, order: Sequence[str] = ()) -> str:
    """`text` with `block` as its section `key`: in place of that section's block where `text` has one, else
    (a `key` in `order`) before the first section that comes after it in `order` or is not in `order` (those of
    other scripts: make chaos), else at the end. Every other byte is kept."""
    found: dict[str, re.Match[str]] = {}
    for m in BLOCK.finditer(text):
        found.setdefault(m.group(1), m)
    if key in found:
        return text[:found[key].start()] + block + text[found[key].end():]
    keys = list(order)
    after = next((m for k, m in found.items() if key in keys and (k not in keys or keys.index(k) > keys.index(key))),
                 None)  # the first such, in the file's order
    if after is not None:
        return text[:after.start()] + block + "\n" + text[after.start():]
    return text.rstrip("\n") + "\n\n" + block


def write_section(path: Path, key: str, block: str, order: Sequence[str] = ()) -> None:
    """Write `block` as section `key` of the file `path` (see `with_section`); a new file starts with HEADER."""
    path.write_text(with_section(path.read_text() if path.is_file() else HEADER, key, block, order))
