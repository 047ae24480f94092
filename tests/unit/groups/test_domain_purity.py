"""Architecture test: the domain stays pure (no I/O, no clock, no randomness)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services.groups.domain as domain_package

DOMAIN_DIR = Path(domain_package.__file__).parent
MODULES = sorted(DOMAIN_DIR.glob("*.py"))

FORBIDDEN_MODULES = {
    "aiokafka",
    "asyncio",
    "asyncpg",
    "faststream",
    "io",
    "json",
    "logging",
    "os",
    "pathlib",
    "pydantic",
    "pydantic_settings",
    "random",
    "secrets",
    "shutil",
    "socket",
    "sqlalchemy",
    "sqlite3",
    "subprocess",
    "sys",
    "tempfile",
    "time",
    "zoneinfo",
    "services.common",
    "services.groups.adapters",
    "services.groups.service_layer",
    "services.groups.entrypoints",
    "services.groups.catalog",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "open", "uuid1", "uuid4", "getenv", "print"}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _calls(tree: ast.AST) -> set[str]:
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                called.add(func.attr)
            elif isinstance(func, ast.Name):
                called.add(func.id)
    return called


def test_domain_modules_found() -> None:
    assert {p.name for p in MODULES} >= {
        "errors.py",
        "personnummer.py",
        "catalog.py",
        "membership.py",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = {
        name
        for name in _imports(tree)
        for forbidden in FORBIDDEN_MODULES
        if name == forbidden or name.startswith(forbidden + ".")
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_clock_or_file_calls(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = _calls(tree) & FORBIDDEN_CALLS
    assert not bad, f"{path.name} calls {sorted(bad)}"
