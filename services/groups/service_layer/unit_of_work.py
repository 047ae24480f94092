"""One PostgreSQL transaction: repositories, the outbox, the inbox and locks share it.

Writes are deferred: handlers change the repository's in-memory state and queue
outgoing records; `commit()` flushes everything and commits. `discard()` forgets what
was queued since the last flush without touching the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from services.groups.adapters.orm import inbox
from services.groups.adapters.outbox import Outbox
from services.groups.adapters.repository import CatalogRepository, GroupsRepository


class UnitOfWork:
    def __init__(self, engine: AsyncEngine, *, dlq_topic: str, service: str) -> None:
        self._engine = engine
        self._dlq_topic = dlq_topic
        self._service = service
        self._connection: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None
        self._processed: set[tuple[str, str]] = set()
        self._newly_processed: list[dict[str, str]] = []
        self.committed = False

    async def __aenter__(self) -> Self:
        self._connection = await self._engine.connect()
        self._transaction = await self._connection.begin()
        self.repo = GroupsRepository(self._connection)
        self.catalog = CatalogRepository(self._connection)
        self.outbox = Outbox(self._connection, dlq_topic=self._dlq_topic, service=self._service)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._connection is not None and self._transaction is not None
        try:
            if self._transaction.is_active:
                await self._transaction.rollback()
        finally:
            await self._connection.close()

    @property
    def connection(self) -> AsyncConnection:
        assert self._connection is not None
        return self._connection

    async def flush(self) -> None:
        await self.repo.flush()
        if self._newly_processed:
            await self.connection.execute(
                pg_insert(inbox).on_conflict_do_nothing(), self._newly_processed
            )
            self._newly_processed = []
        await self.outbox.flush()

    async def commit(self) -> None:
        assert self._transaction is not None
        await self.flush()
        await self._transaction.commit()
        self.committed = True

    async def lock_subjects(self, subjects: Sequence[str]) -> None:
        """Transaction-scoped advisory locks, taken in one fixed order (by hash)."""
        if not subjects:
            return
        await self.connection.execute(
            text(
                "SELECT pg_advisory_xact_lock(h) FROM ("
                " SELECT DISTINCT hashtextextended(s, 0) AS h"
                " FROM unnest(CAST(:subjects AS text[])) AS s ORDER BY h) AS ordered"
            ),
            {"subjects": list(subjects)},
        )

    async def load_processed(self, keys: Iterable[tuple[str, str]]) -> None:
        """Which of these (topic, event id) pairs were applied before: one query."""
        wanted = list(set(keys) - self._processed)
        if not wanted:
            return
        # A join with two arrays: one statement text for every batch size, one stable plan.
        rows = await self.connection.execute(
            text(
                "SELECT i.topic, i.event_id FROM inbox AS i"
                " JOIN unnest(CAST(:topics AS text[]), CAST(:ids AS text[])) AS k(topic, event_id)"
                " ON i.topic = k.topic AND i.event_id = k.event_id"
            ),
            {"topics": [t for t, _ in wanted], "ids": [e for _, e in wanted]},
        )
        self._processed.update((row.topic, row.event_id) for row in rows)

    def is_processed(self, topic: str, event_id: str) -> bool:
        """Applied before (call `load_processed` first) or earlier in this unit of work."""
        return (topic, event_id) in self._processed

    def mark_processed(self, topic: str, event_id: str) -> None:
        """Record the event id with the effects, so a redelivery changes nothing."""
        self._processed.add((topic, event_id))
        self._newly_processed.append({"topic": topic, "event_id": event_id})
