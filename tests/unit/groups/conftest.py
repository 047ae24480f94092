from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from services.groups.catalog import default_catalog_path
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


@pytest.fixture(scope="session")
def catalog_data() -> dict[str, object]:
    data: dict[str, object] = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="session")
def catalog(catalog_data: dict[str, object]) -> Catalog:
    return Catalog.from_dict(catalog_data)
