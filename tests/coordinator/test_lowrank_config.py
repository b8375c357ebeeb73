"""`hybrid.noise` and `hybrid.noise_rank`: strict, defaults keep the Gaussian trials."""
from __future__ import annotations

import pytest

from coordinator.config import ConfigError, load_config, validate_config


def test_defaults_are_gaussian_rank_1() -> None:
    h = validate_config({}).hybrid
    assert (h.noise, h.noise_rank) == ("gaussian", 1)


def test_overrides_set_lowrank() -> None:
    h = load_config("paper-hes-r2", ["hybrid.noise=lowrank", "hybrid.noise_rank=4"]).hybrid
    assert (h.noise, h.noise_rank) == ("lowrank", 4)


@pytest.mark.parametrize("hybrid,field", [
    ({"noise": "LowRank"}, "hybrid.noise"),
    ({"noise": "sparse"}, "hybrid.noise"),
    ({"noise": 1}, "hybrid.noise"),
    ({"noise_rank": 0}, "hybrid.noise_rank"),
    ({"noise_rank": "2"}, "hybrid.noise_rank"),
    ({"noise_rank": 2.0}, "hybrid.noise_rank"),
    ({"noise_rank": True}, "hybrid.noise_rank"),
    ({"noise_rnak": 2}, "hybrid.noise_rnak: unknown key"),
])
def test_bad_values_name_the_field(hybrid: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config({"hybrid": hybrid})


def test_a_job_config_reaches_the_trials() -> None:
    """`hybrid.noise` and `hybrid.noise_rank` of a job config are what its replicas' trials draw."""
    from coordinator.parts import build_parts

    cfg = validate_config({"data": {"dataset": "digits"}, "model": {"hidden": [16]},
                           "hybrid": {"noise": "lowrank", "noise_rank": 3}})
    parts = build_parts(cfg)
    model, hyper = parts.model, parts.hyper
    assert (hyper.noise.family, hyper.noise.rank) == ("lowrank", 3) and hyper.noise.matrices == model.matrices
    plain = build_parts(validate_config({"data": {"dataset": "digits"}, "model": {"hidden": [16]}})).hyper
    assert plain.noise.family == "gaussian"
