"""The outbox relay: publishes committed outbox rows to Kafka, in id order, then deletes them.

Delivery is at least once: a crash between the broker's ack and the delete re-sends
those rows with the same CloudEvent ids, which consumers de-duplicate. Only one relay
publishes at a time (a session advisory lock), so records leave in commit order even
when several service processes run; the others stand by and take over when the
holder's connection dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import any_, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.backoff import Backoff
from services.common.kafka import publish_in_batches
from services.groups.adapters.orm import outbox
from services.groups.adapters.outbox import decode_headers

log = logging.getLogger(__name__)

_RELAY_LOCK_ID = 7_331_002

ProducerFactory = Callable[[], Awaitable[AIOKafkaProducer]]


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        producer_factory: ProducerFactory,
        *,
        batch_size: int = 500,
        idle_poll_seconds: float = 0.5,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._producer_factory = producer_factory
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._wakeup = asyncio.Event()
        self._on_published = on_published or (lambda _n: None)
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self.last_error: str | None = None

    def wake(self) -> None:
        """Called after a transaction that wrote outbox rows commits."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def run(self) -> None:
        backoff = Backoff(cap=5.0)
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = await self._producer_factory()
                async with self._engine.connect() as lock_connection:
                    try:
                        await self._lead(lock_connection, producer, backoff)
                    finally:
                        # A session lock outlives the pool's reset: never hand a connection
                        # that may hold it back to the pool, or no relay could lead again.
                        await lock_connection.invalidate()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # outage of the database or the broker: wait it out
                self.is_leader = False
                self.last_error = type(error).__name__
                delay = backoff.next_delay()
                log.warning(
                    "outbox relay paused: %s; retrying in %.1fs", type(error).__name__, delay
                )
                await asyncio.sleep(delay)
            finally:
                self.is_leader = False
                if producer is not None:
                    await producer.stop()

    async def _lead(
        self, lock_connection: Any, producer: AIOKafkaProducer, backoff: Backoff
    ) -> None:
        while True:
            got = await lock_connection.scalar(
                text(f"SELECT pg_try_advisory_lock({_RELAY_LOCK_ID})")
            )
            await lock_connection.commit()
            if got:
                break
            await asyncio.sleep(1.0)  # another process is relaying; stand by
        self.is_leader = True
        log.info("outbox relay is publishing")
        while True:
            # Cleared before reading, so a wake-up during the publish is never lost.
            self._wakeup.clear()
            published = await self._publish_batch(lock_connection, producer)
            backoff.reset()
            self.last_error = None
            if published < self._batch_size:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._idle_poll)
                except TimeoutError:
                    pass

    async def _publish_batch(self, connection: Any, producer: AIOKafkaProducer) -> int:
        """Take the oldest rows, publish them, and commit their deletion only after the
        broker acknowledged every one: a failure rolls back and they are sent again."""
        oldest = select(outbox.c.id).order_by(outbox.c.id).limit(self._batch_size)
        async with connection.begin():
            rows = (
                await connection.execute(
                    delete(outbox)
                    .where(outbox.c.id == any_(func.array(oldest.scalar_subquery())))
                    .returning(
                        outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers
                    )
                )
            ).all()
            if not rows:
                return 0
            acks = await publish_in_batches(
                producer,
                [
                    (row.topic, row.key, row.value, decode_headers(row.headers))
                    for row in sorted(rows, key=lambda r: r.id)
                ],
            )
            await acks
        self._on_published(len(rows))
        return len(rows)
