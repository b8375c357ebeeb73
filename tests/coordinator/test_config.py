"""Job config: every error names its field; overrides parse as YAML; every preset validates."""
from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import ConfigError, load_config, preset_names, validate_config


@pytest.mark.parametrize("raw,field", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"hybrid": {"r": 0}}, "hybrid.r"),
    ({"hybrid": {"k": 0}}, "hybrid.k"),
    ({"hybrid": {"sigma": -0.1}}, "hybrid.sigma"),
    ({"hybrid": {"sigma": "big"}}, "hybrid.sigma"),
    ({"train": {"epochs": "many"}}, "train.epochs"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"model": {"hidden": []}}, "model.hidden"),
    ({"model": {"arch": "transformer"}}, "model.arch"),
    ({"cluster": {"workers": -1}}, "cluster.workers"),
    ({"data": {"dataset": "digits", "path": "/tmp"}}, "data.path"),
    ({"hybrid": {"combine": "mean", "typo": 1}}, "hybrid.typo"),
])
def test_errors_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(raw)


def test_overrides_parse_yaml(tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text("name: t\nhybrid: {r: 2}\n")
    cfg = load_config(str(f), ["hybrid.r=4", "model.hidden=[3000]", "cluster.address=null"])
    assert cfg.hybrid.r == 4 and cfg.model.hidden == [3000] and cfg.cluster.address is None
    with pytest.raises(ConfigError, match="hybrid.rr: unknown key"):
        load_config(str(f), ["hybrid.rr=4"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(str(f), ["hybrid.r"])


def test_every_preset_validates() -> None:
    names = preset_names()
    for row in ("paper-reference", "paper-assisted-r1", "paper-hes-r2", "paper-hes-r3", "paper-hes-r4",
                "paper-sigma-0p01", "paper-sigma-1p5", "digits-demo"):
        assert row in names
    for name in names:
        assert load_config(name).name == name


def test_unknown_file_or_preset() -> None:
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("no-such-thing")
