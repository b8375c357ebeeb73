"""docs/configuration.md: generated from the models' field descriptions, current, and complete."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from coordinator.config import JobConfig, validate_config
from service.config_docs import config_rows, main, render, type_text
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of a config model, dotted (`hybrid.sigma`), the way house_check.py lists them."""
    out = []
    for name, field in model.model_fields.items():
        t = field.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            out += keys(t, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_the_committed_reference_is_what_the_code_says() -> None:
    assert (ROOT / "docs/configuration.md").read_text() == render(), "docs/configuration.md is stale: run make docs"


def test_every_key_and_setting_is_documented_with_a_meaning() -> None:
    text = render()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \|.*\| ([^|]*) \|$", text, re.MULTILINE)}
    expected = keys(JobConfig) + [f"HES_{name.upper()}" for name in Settings.model_fields]
    assert len(expected) > 60
    for key in expected:
        assert len(rows.get(key, "").split()) >= 4, f"{key}: no row, or no meaning worth the name"


def test_the_defaults_block_is_a_valid_config_equal_to_the_defaults() -> None:
    block = re.search(r"```yaml\n(.*?)```", render(), re.DOTALL)
    assert block is not None
    assert validate_config(yaml.safe_load(block.group(1))) == JobConfig()


def test_a_field_without_description_is_refused() -> None:
    class Bare(BaseModel):
        x: int = 1

    with pytest.raises(ValueError, match="Bare.x has no Field"):
        config_rows(Bare)


@pytest.mark.parametrize("node,words", [
    ({"type": "integer", "minimum": 1, "maximum": 100000}, "int 1 to 100,000"),
    ({"type": "number", "exclusiveMinimum": 0}, "float > 0"),
    ({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}, "int >= 1 or null"),
    ({"enum": ["iid", "dirichlet"], "type": "string"}, "one of `iid`, `dirichlet`"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 10}, "list of int (1 to 10 items)"),
])
def test_types_read_as_words(node: dict, words: str) -> None:
    assert type_text(node) == words


def test_check_fails_on_a_stale_file_and_passes_once_written(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert main(["--check", "--out", str(out)]) == 1  # missing
    assert main(["--out", str(out)]) == 0
    assert main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("`hybrid.sigma`", "`hybrid.s`"))
    assert main(["--check", "--out", str(out)]) == 1
