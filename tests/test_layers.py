"""The layers of DESIGN.md hold: the numerical core imports neither Ray nor FastAPI, and the service no Ray."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY_SIDE = {"coordinator/actor.py", "coordinator/ray_pool.py", "coordinator/local_ray.py", "workers/actor.py",
             "coordinator/runtime_env.py"}


def top_imports(path: Path) -> set[str]:
    """The top-level packages a module imports, anywhere in it (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


@pytest.mark.parametrize("path", modules("workers", "coordinator"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_ray_and_no_fastapi(path: Path) -> None:
    imported = top_imports(path)
    assert "fastapi" not in imported
    if str(path.relative_to(ROOT)) not in RAY_SIDE:
        assert "ray" not in imported


@pytest.mark.parametrize("path", modules("service"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_service_imports_no_ray(path: Path) -> None:
    assert "ray" not in top_imports(path)  # it talks to jobs through coordinator.actor's JobHandle
