"""Architecture test: imports in `services/` point down the layers, never up, and no
module imports itself back through others.

In each service (`services/groups`, `services/export`): entrypoints -> service_layer ->
adapters -> domain. The service layer never imports entrypoints, adapters never import
the service layer or entrypoints, and the domain imports nothing above it
(`test_domain_purity` adds I/O); `services/common` imports neither service.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services

SERVICES_DIR = Path(services.__file__).parent
ROOT = SERVICES_DIR.parent
GROUPS = "services.groups"


def _layers(service: str) -> dict[str, tuple[str, ...]]:
    above_domain = ("adapters", "service_layer", "entrypoints", "bootstrap")
    return {
        f"{service}.domain": tuple(f"{service}.{name}" for name in above_domain),
        f"{service}.adapters": tuple(f"{service}.{name}" for name in above_domain[1:]),
        f"{service}.service_layer": (f"{service}.entrypoints", f"{service}.bootstrap"),
    }


FORBIDDEN: dict[str, tuple[str, ...]] = {
    **_layers(GROUPS),
    **_layers("services.export"),
    "services.common": ("services.groups", "services.export"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every `services` module this file imports, at any depth in the file."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (package or _module_name(path)).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            # `from package import module` imports the module too.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "services" or name.startswith("services.")}


MODULES = {_module_name(p): p for p in sorted(SERVICES_DIR.rglob("*.py"))}
GRAPH = {name: {i for i in _imports(path) if i in MODULES} for name, path in MODULES.items()}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_import(layer: str) -> None:
    upward = sorted(
        f"{name} imports {imported}"
        for name, imported_names in GRAPH.items()
        if _within(name, layer)
        for imported in imported_names
        for above in FORBIDDEN[layer]
        if _within(imported, above)
    )
    assert not upward, upward


def test_no_import_cycle() -> None:
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in path:
            cycle = [*path[path.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        path.append(name)
        for imported in sorted(GRAPH[name]):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_modules_found() -> None:
    handlers = GRAPH[f"{GROUPS}.service_layer.handlers"]
    assert f"{GROUPS}.domain.personnummer" in handlers
    assert f"{GROUPS}.service_layer.handlers" in GRAPH[f"{GROUPS}.service_layer.messagebus"]
