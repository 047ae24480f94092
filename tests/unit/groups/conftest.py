from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.groups.catalog import default_catalog_path, example_catalog_path
from services.groups.domain.catalog import Catalog, Group, Subgroup

TODAY = date(2026, 11, 26)
NOW = datetime(2026, 11, 26, 10, 15, tzinfo=ZoneInfo("Europe/Stockholm"))  # on TODAY

# Groups with the validity the rules of revision 2 need, independent of the shipped
# catalog: OPEN (its subgroup OLD ended 2026-10-31), ENDED (2026-01-01..2026-11-05), NEW
# (from 2026-06-01), OTHER.
DATED = Catalog(
    "1",
    (
        Group(
            "OPEN",
            "Open",
            date(2000, 1, 1),
            subgroups=(
                Subgroup("A", "A", date(2000, 1, 1)),
                Subgroup("B", "B", date(2000, 1, 1)),
                Subgroup("OLD", "Old", date(2000, 1, 1), date(2026, 10, 31)),
            ),
        ),
        Group(
            "ENDED",
            "Ended",
            date(2026, 1, 1),
            date(2026, 11, 5),
            subgroups=(Subgroup("S", "S", date(2026, 1, 1)),),
        ),
        Group("NEW", "New", date(2026, 6, 1)),
        Group("OTHER", "Other", date(2000, 1, 1)),
    ),
)


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
