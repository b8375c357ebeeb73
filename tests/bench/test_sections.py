"""bench/sections.py: the one writer of a BENCHMARKS.md section replaces a block in place, inserts or appends a
new one, and keeps every other byte."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from sections import HEADER, wrap, write_section  # noqa: E402  (bench/ is a folder of scripts, not a package)

ORDER = ["a", "b", "c", "d"]


def file_with(tmp_path: Path) -> tuple[Path, str, str, str]:
    head = "# BENCHMARKS\n\nHand-written words above the sections.\n"
    a, c = wrap("a", "## A\n\nfirst | table |"), wrap("c", "## C\n\n```\nkept ```  <!-- bench:x -->\n```")
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"{head}\n{a}\n{c}\ntrailing words\n")
    return out, head, a, c


def test_an_existing_section_is_replaced_in_place_and_every_other_byte_kept(tmp_path: Path) -> None:
    out, head, a, c = file_with(tmp_path)
    new_a = wrap("a", "## A\n\na longer body\nover two lines")
    write_section(out, "a", new_a, ORDER)
    assert out.read_text() == f"{head}\n{new_a}\n{c}\ntrailing words\n"
    write_section(out, "c", c.replace("kept", "new"), ORDER)
    assert out.read_text() == f"{head}\n{new_a}\n{c.replace('kept', 'new')}\ntrailing words\n"


def test_a_new_section_goes_before_the_next_in_order_or_at_the_end(tmp_path: Path) -> None:
    out, head, a, c = file_with(tmp_path)
    b, z = wrap("b", "## B"), wrap("z", "## Z, written by another script")
    write_section(out, "b", b, ORDER)
    assert out.read_text() == f"{head}\n{a}\n{b}\n{c}\ntrailing words\n"
    write_section(out, "z", z, ORDER)  # not in the order: at the end
    assert out.read_text() == f"{head}\n{a}\n{b}\n{c}\ntrailing words\n\n{z}"
    d = wrap("d", "## D")
    write_section(out, "d", d, ORDER)  # in the order: before the sections of other scripts
    assert out.read_text() == f"{head}\n{a}\n{b}\n{c}\ntrailing words\n\n{d}\n{z}"
    write_section(out, "b", b, ORDER)
    write_section(out, "z", z)  # written again: still once each
    assert out.read_text() == f"{head}\n{a}\n{b}\n{c}\ntrailing words\n\n{d}\n{z}"


def test_a_new_file_starts_with_the_header(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    first, second = wrap("b", "## B"), wrap("a", "## A")
    write_section(out, "b", first, ORDER)
    write_section(out, "a", second, ORDER)
    assert out.read_text() == f"{HEADER}\n{second}\n{first}"
