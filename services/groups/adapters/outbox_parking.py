"""Parked outbox rows: rows the broker refused for good, out of the publishing order.

A parked row keeps its outbox id and its content (topic, key, value, headers), so a
retry after a fix (a topic's `max.message.bytes` raised, say) puts back exactly the
record that was refused, at its old place in the id order. Its records carry their
versions, so a consumer applying by version is not misled by its late arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters.orm import outbox_parked

# Moves rows from the outbox to the parked table in one statement, each with its error.
_PARK = text(
    """
WITH refused AS (
  SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[])) AS r(id, error)
), moved AS (
  DELETE FROM outbox o USING refused r WHERE o.id = r.id
  RETURNING o.id, o.topic, o.key, o.value, o.headers, o.created_at, r.error
)
INSERT INTO outbox_parked (id, topic, key, value, headers, created_at, error)
SELECT id, topic, key, value, headers, created_at, error FROM moved
"""
)

# Back into the outbox with the same id (an identity column: OVERRIDING SYSTEM VALUE).
_RETRY = """
WITH back AS (
  DELETE FROM outbox_parked {where} RETURNING id, topic, key, value, headers, created_at
)
INSERT INTO outbox (id, topic, key, value, headers, created_at) OVERRIDING SYSTEM VALUE
SELECT id, topic, key, value, headers, created_at FROM back
"""
_RETRY_SOME = text(_RETRY.format(where="WHERE id = ANY(CAST(:ids AS bigint[]))"))
_RETRY_ALL = text(_RETRY.format(where=""))


@dataclass(frozen=True)
class ParkedRow:
    """What an operator sees of a parked row: never its key or value (a personnummer)."""

    id: int
    topic: str
    size: int  # bytes of key and value
    error: str  # the broker's refusal, e.g. MessageSizeTooLargeError
    created_at: datetime
    parked_at: datetime


async def park(connection: AsyncConnection, refused: Sequence[tuple[int, str]]) -> None:
    """Move the outbox rows `(id, error)` to the parked table."""
    await connection.execute(
        _PARK, {"ids": [row_id for row_id, _ in refused], "errors": [e for _, e in refused]}
    )


async def list_parked(connection: AsyncConnection, *, limit: int = 100) -> list[ParkedRow]:
    t = outbox_parked.c
    size = func.coalesce(func.octet_length(t.key), 0) + func.coalesce(func.octet_length(t.value), 0)
    query = (
        select(t.id, t.topic, size.label("size"), t.error, t.created_at, t.parked_at)
        .order_by(t.id)
        .limit(limit)
    )
    return [ParkedRow(**row._mapping) for row in await connection.execute(query)]


async def count_parked(connection: AsyncConnection) -> int:
    return int(await connection.scalar(select(func.count()).select_from(outbox_parked)) or 0)


async def retry_parked(connection: AsyncConnection, ids: Sequence[int] | None) -> int:
    """Put parked rows (`ids`, or all) back into the outbox; returns how many moved."""
    if ids is None:
        result = await connection.execute(_RETRY_ALL)
    else:
        result = await connection.execute(_RETRY_SOME, {"ids": list(ids)})
    return int(result.rowcount)
