"""The layers of DESIGN.md hold: the numerical core imports neither Ray nor FastAPI, the service no Ray, and no two
modules of the product import each other, directly or around a circle (imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY_SIDE = {"coordinator/actor.py", "coordinator/ray_pool.py", "coordinator/ray_workers.py", "coordinator/local_ray.py",
            "workers/actor.py", "coordinator/runtime_env.py", "coordinator/ship_data.py", "coordinator/relays.py"}


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


def product_imports() -> dict[str, set[str]]:
    """Each module of workers/, coordinator/ and service/ and the product modules it imports, anywhere in it."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in modules("workers", "coordinator", "service")}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                base = ".".join([*parts, *([node.module] if node.module else [])])
                targets |= {base, *(f"{base}.{a.name}" for a in node.names)}
        for target in targets:
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.setdefault(name, set()).add(target)
    return edges


def test_no_two_product_modules_import_each_other_around_a_circle() -> None:
    edges = product_imports()
    assert "workers.models" in edges["workers.hybrid"]  # the walk sees the imports
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(name):], name]))
        if name not in done:
            for target in sorted(edges.get(name, ())):
                walk(target, [*path, name])
            done.add(name)

    for name in sorted(edges):
        walk(name, [])
