"""The customer-group catalog shipped with the service (data only, no code paths).

`catalog.json` is package data; adapters read it and hand the parsed mapping to
`services.groups.domain.catalog.Catalog.from_dict`. Settings may point to
another file (`GROUPS_CATALOG_FILE`).
"""

from __future__ import annotations

from pathlib import Path

_FILE_NAME = "catalog.json"


def default_catalog_path() -> Path:
    """Where the shipped `catalog.json` lives (next to this module)."""
    return Path(__file__).resolve().with_name(_FILE_NAME)
