"""Reads the groups service's tables, the source of truth for backfill and snapshot.

Rows are streamed through a server-side cursor (`yield_per`) in primary-key order and
handed out in chunks, so memory stays flat however large the tables are. The key order
is what makes a run resumable: "everything after the last key done" is one query.

The table definitions are imported from the groups service, so a schema change there
fails here (types, tests) instead of drifting silently.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ARRAY, ColumnElement, Select, and_, any_, bindparam, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.groups.adapters.catalog_repository import CatalogRepository
from services.groups.adapters.orm import (
    catalog_groups,
    catalog_subgroups,
    memberships,
    vaccination_confirmations,
)
from services.groups.domain.catalog import Catalog

Row = Mapping[str, Any]


class SourceTable(enum.StrEnum):
    """The tables exported, in the order a run goes through them."""

    MEMBERSHIPS = "memberships"
    VACCINATION_CONFIRMATIONS = "vaccination_confirmations"


def _key_column(table: SourceTable) -> ColumnElement[Any]:
    if table is SourceTable.MEMBERSHIPS:
        return memberships.c.membership_id
    return vaccination_confirmations.c.vaccination_id


def _version_column(table: SourceTable) -> ColumnElement[Any]:
    if table is SourceTable.MEMBERSHIPS:
        return memberships.c.version
    return vaccination_confirmations.c.version


def _one_of(table: SourceTable, keys: Sequence[str]) -> ColumnElement[bool]:
    """Key in `keys`, as one array parameter (a chunk may hold more keys than a statement
    may have parameters)."""
    key = _key_column(table)
    return key == any_(bindparam("keys", list(keys), type_=ARRAY(key.type)))


def _changed_column(table: SourceTable) -> ColumnElement[Any]:
    """When the row last changed (indexed), for the catch-up pass."""
    if table is SourceTable.MEMBERSHIPS:
        return memberships.c.updated_at
    return vaccination_confirmations.c.updated_at


def _base_select(table: SourceTable) -> Select[Any]:
    if table is SourceTable.MEMBERSHIPS:
        # Left joins: a code missing from the catalog keeps its row (and shows the code).
        return select(
            memberships.c.membership_id,
            memberships.c.personnummer,
            memberships.c.group_code,
            memberships.c.subgroup_code,
            memberships.c.reference_code,
            memberships.c.valid_from,
            memberships.c.valid_to,
            memberships.c.version,
            memberships.c.status,
            memberships.c.created_at,
            memberships.c.created_by_user,
            memberships.c.created_by_unit,
            memberships.c.updated_by_user,
            memberships.c.updated_by_unit,
            memberships.c.updated_at,
            catalog_groups.c.name.label("catalog_group_name"),
            catalog_subgroups.c.name.label("catalog_subgroup_name"),
        ).select_from(
            memberships.outerjoin(
                catalog_groups, catalog_groups.c.code == memberships.c.group_code
            ).outerjoin(
                catalog_subgroups,
                and_(
                    catalog_subgroups.c.group_code == memberships.c.group_code,
                    catalog_subgroups.c.code == memberships.c.subgroup_code,
                ),
            )
        )
    c = vaccination_confirmations.c
    return select(
        c.vaccination_id,
        c.personnummer,
        c.unit_id,
        c.administered_at,
        c.vaccine,
        c.confirmed_at,
        c.basis,
        c.memberships,
        c.missing_group,
        c.status,
        c.version,
        c.updated_at,
    )


def _where(table: SourceTable, after: str | None, since: datetime | None) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = true()
    if after is not None:
        condition = and_(condition, _key_column(table) > after)
    if since is not None:
        condition = and_(condition, _changed_column(table) >= since)
    return condition


class GroupsTables:
    """Reads on one connection; the caller owns the connection and its transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

    async def now(self) -> datetime:
        value: datetime = (await self._c.execute(select(func.now()))).scalar_one()
        return value

    async def count(
        self, table: SourceTable, *, after: str | None = None, since: datetime | None = None
    ) -> int:
        statement = select(func.count()).select_from(
            _base_select(table).where(_where(table, after, since)).subquery()
        )
        return int((await self._c.execute(statement)).scalar_one())

    async def catalog(self) -> Catalog | None:
        """The catalog in the tables (every code, retired ones included); None before the
        groups service first started."""
        return await CatalogRepository(self._c).load_catalog()

    async def versions(self, table: SourceTable, keys: Sequence[str]) -> dict[str, int]:
        """The current version of each of `keys` (rows are never deleted)."""
        key, version = _key_column(table), _version_column(table)
        result = await self._c.execute(select(key, version).where(_one_of(table, keys)))
        return {str(k): int(v) for k, v in result.all()}

    async def rows_of(self, table: SourceTable, keys: Sequence[str]) -> Sequence[Row]:
        """The rows of `keys` as they are now, in key order, as `chunks` gives them."""
        key = _key_column(table)
        statement = (
            _base_select(table)
            .add_columns(key.label("key"))
            .where(_one_of(table, keys))
            .order_by(key)
        )
        return cast(Sequence[Row], (await self._c.execute(statement)).mappings().all())

    async def chunks(
        self,
        table: SourceTable,
        *,
        size: int,
        after: str | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[Sequence[Row], None]:
        """Rows with key > `after` (and changed at or after `since`), in key order, `size`
        at a time. Each row carries its key under `key`."""
        key = _key_column(table)
        statement = (
            _base_select(table)
            .add_columns(key.label("key"))
            .where(_where(table, after, since))
            .order_by(key)
            .execution_options(yield_per=size)
        )
        async with self._c.stream(statement) as result:
            async for partition in result.mappings().partitions(size):
                # RowMapping also answers to Column keys; callers use the names only.
                yield cast(Sequence[Row], partition)


@contextlib.asynccontextmanager
async def open_tables(engine: AsyncEngine, *, consistent: bool) -> AsyncIterator[GroupsTables]:
    """A connection to read on. `consistent`: one REPEATABLE READ, read-only transaction,
    so every table is read as of the same moment (the snapshot); otherwise each statement
    sees what is committed when it starts (the backfill, whose catch-up pass covers the rest).
    """
    async with engine.connect() as connection:
        if consistent:
            await connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        async with connection.begin():
            yield GroupsTables(connection)
