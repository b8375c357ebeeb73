"""Job config: every error names its field; overrides parse as YAML; every preset validates."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.config import (
    ConfigError,
    JobConfig,
    load_config,
    preset_names,
    read_config_file,
    validate_config,
)


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


@pytest.mark.parametrize("raw,field", [
    ({"train": {"epochs": "2"}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"train": {"epochs": 2.0}}, "train.epochs"),
    ({"hybrid": {"k": "10"}}, "hybrid.k"),
    ({"seed": "7"}, "seed"),
    ({"model": {"hidden": ["32"]}}, "model.hidden.0"),
    ({"train": {"lr": "0.5"}}, "train.lr"),
    ({"train": {"lr": True}}, "train.lr"),
    ({"hybrid": {"sigma": False}}, "hybrid.sigma"),
    ({"train": {"shuffle": 1}}, "train.shuffle"),
    ({"train": {"shuffle": "yes"}}, "train.shuffle"),
    ({"name": 5}, "name"),
])
def test_no_string_or_boolean_is_taken_for_a_number(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(raw)


def test_strict_types_still_take_what_json_and_yaml_give() -> None:
    cfg = validate_config({"train": {"lr": 2, "l2": 0, "shuffle": False}, "cluster": {"cpus_per_worker": 2},
                           "model": {"hidden": [16, 8], "init": None}, "data": {"dataset": "digits"}})
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float) and cfg.model.hidden == [16, 8]
    assert validate_config(cfg.model_dump(mode="json")) == cfg  # the service stores configs as JSON
    assert validate_config(JobConfig().model_dump(mode="json")) == JobConfig()


def test_yaml_scientific_notation_is_a_float(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads `1e-4` and `1.0e4` as strings; the config loader reads them as numbers."""
    f = tmp_path / "job.yaml"
    f.write_text("train: {l2: 1e-4, lr: 1.0e1}\nhybrid: {sigma: 5E-1}\nname: 1e3x\n")
    assert read_config_file(str(f))["train"] == {"l2": 1e-4, "lr": 10.0}  # not the string "1e-4"
    cfg = load_config(str(f), ["train.epochs=3", "hybrid.sigma=2e-1"])
    assert (cfg.train.l2, cfg.train.lr, cfg.hybrid.sigma, cfg.train.epochs) == (1e-4, 10.0, 0.2, 3)
    assert cfg.name == "1e3x"
    assert load_config(str(f), ["train.l2=3e-5"]).train.l2 == 3e-5
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(str(f), ["train.epochs=1e1"])  # a float is no integer


@pytest.mark.parametrize("raw,field", [
    ({"model": {"arch": "module"}}, "model.factory: set it for arch 'module'"),
    ({"model": {"factory": "examples.tabular:mlp"}}, "model.factory: set it for arch 'module'"),
    ({"model": {"arch": "module", "factory": "examples.tabular"}}, "model.factory: String should match pattern"),
    ({"model": {"arch": "module", "factory": "a:b", "perturb": "some"}}, "model.perturb"),
    ({"model": {"kwargs": {"hidden": 3}}}, "model.kwargs, model.perturb: only for arch 'module'"),
    ({"data": {"dataset": "npz"}}, "data.path: dataset 'npz' needs the path"),
    ({"data": {"dataset": "factory"}}, "data.factory: set it for dataset 'factory'"),
    ({"data": {"dataset": "digits", "kwargs": {"n": 1}}}, "data.kwargs: only passed to a data.factory"),
    ({"train": {"loss": "hinge"}}, "train.loss"),
    ({"cluster": {"runtime_env": ["x"]}}, "cluster.runtime_env"),
])
def test_own_model_keys_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        validate_config(raw)
    own = validate_config({"data": {"dataset": "npz", "path": "x.npz"}, "train": {"loss": "mse"},
                           "model": {"arch": "module", "factory": "pkg.mod:net", "kwargs": {"d": 8}, "perturb": "all"},
                           "cluster": {"runtime_env": {"py_modules": ["./pkg"]}}})
    assert own.model.kwargs == {"d": 8} and own.cluster.runtime_env == {"py_modules": ["./pkg"]}


def test_issue15_presets_validate_and_finetune_zo_fits_100_bytes() -> None:
    import numpy as np

    from workers.messages import Result, RoundKind, Task, encode_result, encode_task
    from workers.state import Decision, DecisionKind

    seed_only = load_config("seedonly-r4")
    assert (seed_only.hybrid.r, seed_only.cluster.workers, seed_only.data.dataset) == (4, 2, "mnist")
    assert seed_only.hybrid.mode == "hybrid" and seed_only.hybrid.combine in ("es", "guided")
    zo = load_config("finetune-zo")
    assert (zo.hybrid.mode, zo.cluster.workers, zo.hybrid.trials) == ("zo", 4, "shared")
    # a zo round per worker: every cost up, one weight per shared seed down (workers/messages.py)
    k = zo.hybrid.k
    head, array, _ = encode_result(Result(9, 3, examples=250, costs=(0.5,) * k), RoundKind.STOCHASTIC)
    header, decision = encode_task(Task(9, RoundKind.STOCHASTIC,
                                        Decision(8, DecisionKind.ES, array=np.zeros(k // 2, np.float32))))
    assert array is None and len(head) + len(header) + len(decision) <= 100
