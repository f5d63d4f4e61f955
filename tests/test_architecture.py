"""Import direction is one way: api/flows/deployments → tasks → core → channels, models;
channels/ is a leaf (each adapter owns its settings model; core/settings.py composes them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"core", "channels", "api", "tasks", "flows", "deployments", "prefect", "fastapi"},
    "channels": {"core", "api", "tasks", "flows", "deployments", "prefect", "fastapi"},
    "core": {"api", "tasks", "flows", "deployments", "prefect", "fastapi"},
    "tasks": {"api", "flows", "deployments", "fastapi"},
    "flows": {"api", "deployments", "fastapi"},
    "api": {"tasks", "flows", "deployments", "prefect"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_import_direction() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for name in _imports(path):
                top = name.split(".")[0]
                if top in forbidden:
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert problems == []


def test_fast_suite_does_not_import_prefect() -> None:
    for path in (ROOT / "tests").rglob("*.py"):
        if {"flows", "e2e"} & set(path.parts):
            continue
        assert not {n for n in _imports(path) if n.split(".")[0] == "prefect"}, path
