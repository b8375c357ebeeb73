"""bench/science.py's es step timing runs on the real engine (a Hyper built the way the core reads it)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import science  # noqa: E402


def test_the_es_step_timing_applies_a_real_es_decision() -> None:
    assert science.apply_seconds("lowrank", n_workers=1, k=2, repeats=1) > 0
