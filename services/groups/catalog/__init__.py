"""The customer-group catalogs shipped with the service (data only, no code paths).

`catalog.json` (the default) holds only what the user guide shows; `example.json` is an
example with more subgroups and suggestion rules, for development and tests (marked
`"example": true`, refused in production). Adapters read them and hand the parsed
mapping to `services.groups.domain.catalog.Catalog.from_dict`. Settings may point to
another file (`GROUPS_CATALOG_FILE`).
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def default_catalog_path() -> Path:
    """Where the shipped `catalog.json` lives (next to this module)."""
    return _HERE / "catalog.json"


def example_catalog_path() -> Path:
    """The example catalog (`example.json`): development and tests only."""
    return _HERE / "example.json"
