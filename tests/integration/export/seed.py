"""Bulk rows in the groups tables, straight into PostgreSQL (COPY), for the backfill tests
and `bench/export_backfill.py`. Valid-looking, Luhn-valid personnummer; never real ones
on purpose (generated from dates in 1930-1998 and a serial)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from services.common.db import create_engine
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate, repository
from services.groups.bootstrap import read_catalog_file
from services.groups.catalog import default_catalog_path
from services.groups.domain.personnummer import luhn_check_digit

_NS = uuid.UUID("5b0f7a1e-3c2d-4e8f-9a6b-1d2c3e4f5a60")
_FIRST_BIRTH = date(1930, 1, 1)
_DAYS = 25_000
CUSTOMER_COLUMNS = ("personnummer", "created_at", "updated_at")
MEMBERSHIP_COLUMNS = (
    "membership_id",
    "personnummer",
    "group_code",
    "subgroup_code",
    "reference_code",
    "valid_from",
    "valid_to",
    "version",
    "status",
    "created_at",
    "updated_at",
    "created_by_user",
    "created_by_unit",
    "updated_by_user",
    "updated_by_unit",
)


def seeded_personnummer(index: int) -> str:
    """A distinct Luhn-valid 12-digit personnummer per index (up to 25 million)."""
    born = _FIRST_BIRTH + timedelta(days=index % _DAYS)
    serial = f"{index // _DAYS:03d}"
    return f"{born:%Y%m%d}{serial}" + luhn_check_digit(f"{born:%y%m%d}{serial}")


def _rows(first: int, customers: int, at: datetime) -> Iterator[tuple[tuple[object, ...], ...]]:
    """Per customer: its row, an active INFLUENSA and a historical COVID_19 membership."""
    for index in range(first, first + customers):
        pnr = seeded_personnummer(index)
        start = date(2025, 1, 1) + timedelta(days=index % 300)
        yield (
            (pnr, at, at),
            (
                str(uuid.uuid5(_NS, f"{index}:a")),
                pnr,
                "INFLUENSA",
                "ALDER_65_PLUS",
                f"REF-{index}",
                start,
                None,
                1,
                "active",
                at,
                at,
                "seed",
                "unit-seed",
                None,
                None,
            ),
            (
                str(uuid.uuid5(_NS, f"{index}:h")),
                pnr,
                "COVID_19",
                "REKOMMENDERAD",
                None,
                start,
                start + timedelta(days=30),
                2,
                "historical",
                at,
                at + timedelta(microseconds=index % 1_000_000),
                "seed",
                "unit-seed",
                "seed",
                "unit-seed",
            ),
        )


async def prepare_schema(database_url: str) -> None:
    """The groups service's tables and catalog, as its start-up leaves them."""
    engine = create_engine(DatabaseSettings(database_url=database_url))
    try:
        await migrate.upgrade(engine)
        # The catalog writer is moving out of GroupsRepository (into CatalogRepository);
        # take whichever this checkout has.
        writer: Any = getattr(repository, "CatalogRepository", repository.GroupsRepository)
        async with engine.begin() as connection:
            await writer(connection).import_catalog(read_catalog_file(default_catalog_path()))
    finally:
        await engine.dispose()


async def seed_memberships(database_url: str, memberships: int, *, chunk: int = 20_000) -> None:
    """`memberships` rows (two per customer, half active, half historical), by COPY."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn)
    at = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    try:
        customers, done = memberships // 2, 0
        while done < customers:
            size = min(chunk, customers - done)
            rows = list(_rows(done, size, at))
            await connection.copy_records_to_table(
                "customers", records=[r[0] for r in rows], columns=CUSTOMER_COLUMNS
            )
            await connection.copy_records_to_table(
                "memberships",
                records=[m for r in rows for m in r[1:]],
                columns=MEMBERSHIP_COLUMNS,
            )
            done += size
    finally:
        await connection.close()
