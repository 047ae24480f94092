"""Architecture test: the export's domain stays pure (no I/O, no clock, no settings)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services.export.domain as domain_package

MODULES = sorted(Path(domain_package.__file__).parent.glob("*.py"))
ALLOWED = {"__future__", "collections.abc", "dataclasses", "datetime", "enum", "hashlib",
           "hmac", "typing", "uuid", "services.export.domain.records",
           "services.common.ids"}  # fmt: skip  # (ids: hashlib and uuid only)
FORBIDDEN_CALLS = {"now", "utcnow", "today", "open", "uuid1", "uuid4", "getenv", "print"}


def test_domain_modules_found() -> None:
    assert {p.name for p in MODULES} >= {"records.py", "checkpoint.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_only_pure_imports_and_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            called.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    assert imported <= ALLOWED, f"{path.name} imports {sorted(imported - ALLOWED)}"
    assert not called & FORBIDDEN_CALLS, f"{path.name} calls {sorted(called & FORBIDDEN_CALLS)}"
