"""One PostgreSQL transaction: repositories, the outbox, the inbox and locks share it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from services.groups.adapters.orm import inbox
from services.groups.adapters.outbox import Outbox
from services.groups.adapters.repository import GroupsRepository


class UnitOfWork:
    def __init__(self, engine: AsyncEngine, *, dlq_topic: str, service: str) -> None:
        self._engine = engine
        self._dlq_topic = dlq_topic
        self._service = service
        self._connection: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None
        self.committed = False

    async def __aenter__(self) -> Self:
        self._connection = await self._engine.connect()
        self._transaction = await self._connection.begin()
        self.repo = GroupsRepository(self._connection)
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

    async def commit(self) -> None:
        assert self._transaction is not None
        await self._transaction.commit()
        self.committed = True

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self.connection.begin_nested():
            yield

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

    async def mark_processed(self, topic: str, event_id: str) -> bool:
        """Record the event id; False when it was processed before (a redelivery)."""
        result = await self.connection.execute(
            pg_insert(inbox)
            .values(topic=topic, event_id=event_id)
            .on_conflict_do_nothing()
            .returning(inbox.c.event_id)
        )
        return result.first() is not None
