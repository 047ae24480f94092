"""Reading the PDL audit log and its hash chain (for `audit-verify` and extracts)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters.audit_rows import entry_of
from services.groups.adapters.orm import audit_chain, audit_log
from services.groups.domain.audit_chain import Link, StoredLink

_NOT_SEALED = ~exists().where(audit_chain.c.audit_id == audit_log.c.id)


async def repeatable_read(connection: AsyncConnection) -> None:
    """One snapshot for the rest of the transaction (call before its first query)."""
    await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))


async def stored_links(
    connection: AsyncConnection, *, chunk: int = 5000
) -> AsyncGenerator[StoredLink]:
    """Every link in position order, with its audit row (None when the row is gone)."""
    query = (
        select(
            audit_chain.c.position,
            audit_chain.c.audit_id,
            audit_chain.c.prev_hash,
            audit_chain.c.hash,
            audit_log,
        )
        .select_from(audit_chain.outerjoin(audit_log, audit_log.c.id == audit_chain.c.audit_id))
        .order_by(audit_chain.c.position)
        .execution_options(yield_per=chunk)
    )
    result = await connection.stream(query)
    async for row in result:
        yield StoredLink(
            Link(row.position, row.audit_id, row.prev_hash, row.hash),
            entry_of(row._mapping) if row.id is not None else None,
        )


async def sealed_twice(connection: AsyncConnection) -> set[int]:
    """Audit ids with more than one link (the primary key forbids it; a superuser can
    drop it)."""
    query = select(audit_chain.c.audit_id).group_by(audit_chain.c.audit_id).having(func.count() > 1)
    return set(await connection.scalars(query))


async def unsealed(connection: AsyncConnection, *, before: datetime) -> tuple[int | None, int]:
    """The lowest id of a row written before `before` and never sealed, and how many
    rows are not sealed yet at all."""
    oldest = await connection.scalar(
        select(func.min(audit_log.c.id)).where(_NOT_SEALED, audit_log.c.at < before)
    )
    count = await connection.scalar(select(func.count()).select_from(audit_log).where(_NOT_SEALED))
    return oldest, count or 0


async def extract(
    connection: AsyncConnection,
    *,
    personnummer: str | None = None,
    user_id: str | None = None,
    unit_id: str | None = None,
    since: datetime | None = None,
) -> list[Any]:
    """Audit rows matching every given filter, oldest first."""
    conditions: list[ColumnElement[bool]] = []
    if personnummer is not None:
        conditions.append(audit_log.c.personnummer == personnummer)
    if user_id is not None:
        conditions.append(audit_log.c.user_id == user_id)
    if unit_id is not None:
        conditions.append(audit_log.c.unit_id == unit_id)
    if since is not None:
        conditions.append(audit_log.c.at >= since)
    query = select(audit_log).where(*conditions).order_by(audit_log.c.at, audit_log.c.id)
    return list((await connection.execute(query)).all())
