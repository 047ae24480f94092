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
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.background import BackgroundTask
from services.common.backoff import Backoff, retry_forever
from services.common.kafka import publish_in_batches
from services.groups.adapters.leadership import leadership
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
        self._background = BackgroundTask(self.run, "outbox-relay")
        self.is_leader = False
        self.last_error: str | None = None

    def wake(self) -> None:
        """Called after a transaction that wrote outbox rows commits."""
        self._wakeup.set()

    def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    async def run(self) -> None:
        backoff = Backoff(cap=5.0)
        # A term of leadership ends only by an error (an outage of the database or the
        # broker), which is waited out; `_lead` resets the backoff after each round.
        await retry_forever(lambda: self._term(backoff), backoff=backoff, on_retry=self._paused)

    async def _term(self, backoff: Backoff) -> None:
        producer: AIOKafkaProducer | None = None
        try:
            producer = await self._producer_factory()
            async with leadership(self._engine, _RELAY_LOCK_ID) as lock_connection:
                await self._lead(lock_connection, producer, backoff)
        finally:
            self.is_leader = False
            if producer is not None:
                await producer.stop()

    def _paused(self, error: Exception, delay: float) -> None:
        self.is_leader = False
        self.last_error = type(error).__name__
        log.warning("outbox relay paused: %s; retrying in %.1fs", type(error).__name__, delay)

    async def _lead(
        self, lock_connection: Any, producer: AIOKafkaProducer, backoff: Backoff
    ) -> None:
        self.is_leader = True
        log.info("outbox relay is publishing")
        # One statement per round, outside a transaction (only the leader reads or deletes).
        connection = await lock_connection.execution_options(isolation_level="AUTOCOMMIT")
        sent = _Sent(self._wakeup)
        while True:
            # Cleared before reading, so a wake-up during the round is never lost.
            self._wakeup.clear()
            sent.raise_failure()
            while sent.unacknowledged() >= 2 * self._batch_size:
                # At most two rounds unacknowledged; an acknowledgement wakes this.
                self._wakeup.clear()
                await self._wakeup.wait()
                sent.raise_failure()
            acknowledged = sent.take_acknowledged()
            rows = (
                await connection.execute(
                    _NEXT_ROUND,
                    {"done": acknowledged, "known": sent.known(), "limit": self._batch_size},
                )
            ).all()
            sent.deleted(acknowledged)
            if acknowledged:
                self._on_published(len(acknowledged))
            backoff.reset()
            self.last_error = None
            if rows:
                ids = [row.id for row in rows]
                acks = await publish_in_batches(
                    producer,
                    [(row.topic, row.key, row.value, decode_headers(row.headers)) for row in rows],
                )
                sent.add(ids, acks)
            if len(rows) < self._batch_size:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._idle_poll)
                except TimeoutError:
                    pass


# Deletes the rows the broker acknowledged and reads the next ones in id order, in one
# round trip. The read's snapshot predates the delete, hence `known`: every id sent and
# not yet deleted, which it skips. Reading oldest-first (not "after the last id") also
# finds a row whose transaction took its id earlier but committed later.
_NEXT_ROUND = text(
    """
WITH gone AS (DELETE FROM outbox WHERE id = ANY(CAST(:done AS bigint[])))
SELECT id, topic, key, value, headers FROM outbox
WHERE id <> ALL(CAST(:known AS bigint[]))
ORDER BY id LIMIT :limit
"""
)


class _Sent:
    """The ids handed to the producer in this term of leadership, until deleted.

    A round is published without waiting for the previous one's acknowledgement, which
    used to hold a transaction open for a broker round trip while newer rows waited;
    the producer keeps each partition's batches in order. A refused round fails the
    term: everything not yet deleted is read and sent again by the next term."""

    def __init__(self, wakeup: asyncio.Event) -> None:
        self._unacknowledged: dict[int, None] = {}
        self._acknowledged: list[int] = []
        self._failure: BaseException | None = None
        self._wakeup = wakeup

    def add(self, ids: list[int], acks: asyncio.Future[Any]) -> None:
        self._unacknowledged.update(dict.fromkeys(ids))

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():  # the producer stopped under it
                self._failure = self._failure or RuntimeError("acknowledgement cancelled")
            elif (error := future.exception()) is not None:
                self._failure = self._failure or error
            else:
                for row_id in ids:
                    del self._unacknowledged[row_id]
                self._acknowledged += ids
            self._wakeup.set()  # delete what was acknowledged with the next round

        acks.add_done_callback(done)

    def unacknowledged(self) -> int:
        return len(self._unacknowledged)

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def take_acknowledged(self) -> list[int]:
        return list(self._acknowledged)

    def deleted(self, ids: list[int]) -> None:
        del self._acknowledged[: len(ids)]

    def known(self) -> list[int]:
        return [*self._unacknowledged, *self._acknowledged]
