"""deploy/netlab.py without root: link rates are checked, and a machine that cannot make namespaces gets one line."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
import netlab  # noqa: E402


def test_rates() -> None:
    assert netlab.rate_bits("100mbit") == 100_000_000
    assert netlab.rate_bits("1gbit") == 1_000_000_000
    assert netlab.rate_bits("none") == 0
    with pytest.raises(netlab.LabError, match="'fast'.*10mbit"):
        netlab.check_rate("fast")


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    assert netlab.main(["--prefix", "tcli", "up", "--hosts", "2"]) == 1
    err = capsys.readouterr().err
    assert err == "netlab: network sandbox needs root (network namespaces and tc)\n"


def test_bad_link_rate_refused_before_anything_is_made(capsys: pytest.CaptureFixture[str]) -> None:
    assert netlab.main(["--prefix", "tcli", "up", "--link", "100mb"]) == 1
    assert capsys.readouterr().err == ("netlab: link rate '100mb': give a tc rate such as 10mbit, 100mbit, 1gbit, "
                                       "or none\n")
    assert netlab.namespaces("tcli") == []


def test_status_without_a_sandbox(capsys: pytest.CaptureFixture[str]) -> None:
    assert netlab.main(["--prefix", "tcli", "bytes"]) == 1
    assert "no sandbox 'tcli' is up" in capsys.readouterr().err
