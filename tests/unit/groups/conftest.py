from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from services.groups.catalog import default_catalog_path, example_catalog_path
from services.groups.domain.catalog import Catalog

TODAY = date(2026, 11, 26)


def _file_data(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="session")
def catalog_data() -> dict[str, object]:
    return _file_data(default_catalog_path())


@pytest.fixture(scope="session")
def catalog(catalog_data: dict[str, object]) -> Catalog:
    """The shipped catalog: only what the user guide shows, no suggestion rules."""
    return Catalog.from_dict(catalog_data)


@pytest.fixture(scope="session")
def example_catalog_data() -> dict[str, object]:
    return _file_data(example_catalog_path())


@pytest.fixture(scope="session")
def example_catalog(example_catalog_data: dict[str, object]) -> Catalog:
    """The example catalog (services/groups/catalog/example.json): for tests that need
    more subgroups than the guide shows, or suggestion rules."""
    return Catalog.from_dict(example_catalog_data)
