"""The outbox relay: publishes committed outbox rows to Kafka in id order, one Kafka
transaction per round, and deletes them once the transaction has committed.

- One leader. The relay publishes while it holds the lease `outbox-relay` (renewed
  while it makes progress, so a frozen or stuck process loses it) and through a producer
  with the deployment's fixed `transactional.id`: starting a new leader's producer
  fences the old one's and aborts its open transaction, so nothing the old leader had in
  flight becomes visible to a `read_committed` consumer after the new leader's records.
- Woken at once. A transaction that wrote outbox rows wakes the leader as it commits:
  `wake()` in the same process, a PostgreSQL NOTIFY (channel `groups_outbox`, sent by the
  write statement, delivered at commit) from any process. An idle poll is the fallback.
- At least once. A crash between the commit and the delete sends those rows again, with
  the same CloudEvent ids (consumers drop repeated ids), before anything newer.
- Refusals. Of a round the broker refuses in part, what it took is committed (per
  partition, the batches before the refused one), so nothing is sent twice, and the rest
  goes with the next round. A row refused for good (too large, invalid) is parked
  (`outbox_parking`); when the refused batch held several rows, the next round sends them
  one per batch to find which. A refusal of the
  topic (authorization failed, unknown topic) parks nothing, since it would park every
  row of that topic: the round is retried and an alert raised. Failures back off
  exponentially with jitter, and the backoff resets only when a transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiokafka.errors
import aiokafka.producer.sender
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    BrokerResponseError,
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.background import BackgroundTask
from services.common.backoff import Backoff, retry_forever
from services.common.kafka import OutgoingRecord, SentBatch, send_batches
from services.groups.adapters.batch_writer import OUTBOX_CHANNEL
from services.groups.adapters.leadership import Lease, LeaseLost
from services.groups.adapters.metrics import GroupsMetrics
from services.groups.adapters.outbox import decode_headers
from services.groups.adapters.outbox_parking import park

log = logging.getLogger(__name__)

LEASE_NAME = "outbox-relay"


class InvalidRecordError(BrokerResponseError):  # type: ignore[misc]  # aiokafka is untyped
    """INVALID_RECORD (87, KIP-467): the broker validated a record and refused it (a
    record without a key on a compacted topic, say). aiokafka 0.14 knows no class for
    the code and reports an UnknownError; registered, so that this refusal is told
    apart from an unknown failure."""

    errno = 87
    message = "INVALID_RECORD"
    description = "This record has failed the validation on broker and hence will be rejected."


aiokafka.errors.kafka_errors.setdefault(InvalidRecordError.errno, InvalidRecordError)

# A transaction's first AddPartitionsToTxn, sent while the broker still writes the
# previous transaction's commit markers, is answered CONCURRENT_TRANSACTIONS; aiokafka
# then waits a fixed 20 ms before it asks again (KAFKA-5477), and so did every prompt of
# a round started right after another. The markers take a few milliseconds: ask again
# after 2 (BENCHMARKS.md, issue 17).
CONCURRENT_TRANSACTIONS_RETRY_SECONDS = 0.002
aiokafka.producer.sender.BACKOFF_OVERRIDE = CONCURRENT_TRANSACTIONS_RETRY_SECONDS

# The broker refuses the content of the batch, and will again: MESSAGE_TOO_LARGE (larger
# than the topic's max.message.bytes), RECORD_LIST_TOO_LARGE (than a log segment),
# INVALID_RECORD, and CORRUPT_MESSAGE (INVALID_RECORD as older produce versions say it).
ROW_REFUSALS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordException,
)
# The broker refuses the topic, whatever the record.
TOPIC_REFUSALS = (TopicAuthorizationFailedError, UnknownTopicOrPartitionError)

ProducerFactory = Callable[[], AIOKafkaProducer]


class TopicRefused(Exception):
    """The broker refuses a topic (not a row of it): retried and alerted on."""

    def __init__(self, topic: str, error: str) -> None:
        super().__init__(f"topic {topic}: {error}")
        self.topic = topic
        self.error = error


class RowsRefused(Exception):
    """A round was refused for some of its rows: they are parked, or sent one per batch
    next time to find which; the round's other rows go with the next round."""


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        producer_factory: ProducerFactory,
        *,
        lease_seconds: float = 10.0,
        batch_size: int = 500,
        idle_poll_seconds: float = 0.5,
        metrics: GroupsMetrics | None = None,
        metadata_wait_seconds: float = 5.0,
        start_timeout_seconds: float = 30.0,
        prompts_topic: str | None = None,
    ) -> None:
        """`producer_factory` builds (does not start) a producer with the relay's
        `transactional_id`. Rows for `prompts_topic` are observed in the prompt latency
        histogram once their transaction commits."""
        self._engine = engine
        self._producer_factory = producer_factory
        self._lease = Lease(LEASE_NAME, seconds=lease_seconds)
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._metrics = metrics or GroupsMetrics()
        self._metadata_wait = metadata_wait_seconds
        self._start_timeout = start_timeout_seconds
        self._prompts_topic = prompts_topic
        self._wakeup = asyncio.Event()
        self._background = BackgroundTask(self.run, "outbox-relay")
        self._alone: set[int] = set()  # ids of rows to send in a batch of their own
        self.is_leader = False
        self.standing_by = False  # waiting for the lease another process holds
        self.last_error: str | None = None
        self.alert: str | None = None  # a topic the broker refuses, until a commit

    def wake(self) -> None:
        """Called after a transaction that wrote outbox rows commits."""
        self._wakeup.set()

    def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    def state(self) -> str:
        """For /healthz: what the relay of this process is doing."""
        if self.is_leader:
            return "publishing" if self.last_error is None else f"retrying: {self.last_error}"
        if self.standing_by:
            return "standby"
        return "starting" if self.last_error is None else f"paused: {self.last_error}"

    async def run(self) -> None:
        backoff = Backoff(cap=10.0)
        # A term of leadership ends only by an error, which is waited out; a committed
        # transaction resets the backoff.
        await retry_forever(lambda: self._term(backoff), backoff=backoff, on_retry=self._paused)

    async def _term(self, backoff: Backoff) -> None:
        async with self._engine.connect() as connection:
            # One statement per round, outside a transaction (only the leader reads or
            # deletes), on the one session the lease names.
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            self.standing_by = True
            try:
                await self._lease.acquire(connection)
            finally:
                self.standing_by = False
            try:
                producer = await self._start_producer()  # fences the previous leader's
                try:
                    self.is_leader = True
                    log.info("outbox relay is publishing (lease term %s)", self._lease.term)
                    async with _notified(connection, OUTBOX_CHANNEL, self.wake):
                        await self._lead(connection, producer, backoff)
                finally:
                    self.is_leader = False
                    await _close(producer)
            except asyncio.CancelledError:
                # A clean stop: a standby may take over at once.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._lease.release(connection), 5.0)
                raise

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = self._producer_factory()
        try:
            await asyncio.wait_for(producer.start(), self._start_timeout)
        except BaseException:
            await _close(producer)
            raise
        return producer

    def _paused(self, error: Exception, delay: float) -> None:
        name = type(error).__name__
        self.last_error = name
        self._metrics.relay_retries.labels(name).inc()
        if isinstance(error, TopicRefused):
            self.alert = str(error)
            self._metrics.topic_refusals.labels(error.topic, error.error).inc()
            log.error(
                "outbox relay: the broker refuses topic %s (%s); no row is parked, every "
                "row waits; retrying in %.1fs",
                error.topic,
                error.error,
                delay,
            )
        elif isinstance(error, RowsRefused):
            log.info("outbox relay: %s; the other rows go in %.1fs", error, delay)
        elif isinstance(error, LeaseLost):
            log.warning("outbox relay: another process leads now; standing by")
        else:
            log.warning("outbox relay paused: %s; retrying in %.1fs", name, delay)

    async def _lead(
        self, connection: AsyncConnection, producer: AIOKafkaProducer, backoff: Backoff
    ) -> None:
        committed: list[int] = []  # published in a committed transaction, not yet deleted
        while True:
            # Cleared before reading, so a wake-up during the round is never lost.
            self._wakeup.clear()
            rows = (
                await connection.execute(
                    _NEXT_ROUND, {"done": committed, "limit": self._batch_size}
                )
            ).all()
            if committed:
                self._metrics.published.inc(len(committed))
                self._alone.difference_update(committed)
            await self._lease.renew_if_due(connection)
            committed = []
            if rows:
                committed = await self._publish(connection, producer, rows)
                backoff.reset()
                self.last_error = self.alert = None
                continue  # the next statement deletes them at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._idle_poll)

    async def _publish(
        self, connection: AsyncConnection, producer: AIOKafkaProducer, rows: Sequence[Row[Any]]
    ) -> list[int]:
        """Publish `rows` in one transaction; returns their ids once it has committed."""
        records: list[OutgoingRecord] = [
            (row.topic, row.key, row.value, decode_headers(row.headers)) for row in rows
        ]
        for topic in {record[0] for record in records}:
            await self._check_topic(producer, topic)
        alone = {i for i, row in enumerate(rows) if row.id in self._alone}
        await producer.begin_transaction()
        try:
            sent = await send_batches(producer, records, alone=alone)
            errors = await self._outcomes(sent)
        except BaseException:
            await _abort(producer)
            raise
        refused = [
            (batch.positions, error)
            for batch, error in zip(sent, errors, strict=True)
            if error is not None
        ]
        if not refused:
            await producer.commit_transaction()
            self._observe_prompts(rows)
            return [row.id for row in rows]
        committed = await _commit_what_was_taken(producer, sent, errors)
        self._observe_prompts([rows[p] for p in committed])
        # The producer's sequence numbers are off after a refused batch: this term ends
        # (the next one starts a new producer), whatever the refusal.
        raise await self._refusal(connection, rows, refused, [rows[p].id for p in committed])

    def _observe_prompts(self, rows: Sequence[Row[Any]]) -> None:
        """Prompt latency: from the start's receipt (the row's `created_at`) to now, when
        the transaction holding its prompt has committed."""
        now = datetime.now(UTC)
        for row in rows:
            if row.topic == self._prompts_topic:
                latency = (now - row.created_at).total_seconds()
                self._metrics.prompt_latency.observe(max(0.0, latency))

    async def _check_topic(self, producer: AIOKafkaProducer, topic: str) -> None:
        """The topic's metadata, before a transaction starts: aiokafka would otherwise wait
        for an unknown topic for its whole request timeout."""
        try:
            await asyncio.wait_for(producer.partitions_for(topic), self._metadata_wait)
        except TimeoutError:
            raise TopicRefused(topic, UnknownTopicOrPartitionError.__name__) from None
        except TOPIC_REFUSALS as error:
            raise TopicRefused(topic, type(error).__name__) from None

    async def _outcomes(
        self,
        sent: Sequence[SentBatch],
    ) -> list[BaseException | None]:
        """Each batch's refusal, or None once acknowledged. The producer retries what
        the broker may still take (an outage, a leader moving) for as long as it takes;
        a warning names the topics waited for meanwhile."""
        pending: set[asyncio.Future[Any]] = {batch.ack for batch in sent}
        waited, interval = 0.0, 10.0
        while pending:
            _, pending = await asyncio.wait(pending, timeout=interval)
            if pending:
                waited += interval
                interval = min(2 * interval, 60.0)
                topics = sorted({b.partition.topic for b in sent if b.ack in pending})
                log.warning(
                    "outbox relay: a round unacknowledged for %.0f s, waiting for topics %s",
                    waited,
                    ", ".join(topics),
                )
        return [
            KafkaError("acknowledgement cancelled") if b.ack.cancelled() else b.ack.exception()
            for b in sent
        ]

    async def _refusal(
        self,
        connection: AsyncConnection,
        rows: Sequence[Row[Any]],
        refused: Sequence[tuple[list[int], BaseException]],
        committed: list[int],
    ) -> BaseException:
        """Delete what was committed (ids), park what was refused for good; the error to
        end this term with."""
        if committed:
            await connection.execute(_DELETE, {"done": committed})
            self._metrics.published.inc(len(committed))
            self._alone.difference_update(committed)
        parked: list[tuple[int, str]] = []
        isolate: list[int] = []
        topic_refusal: TopicRefused | None = None
        other: BaseException | None = None
        for positions, error in refused:
            if isinstance(error, ROW_REFUSALS):
                if len(positions) == 1:
                    parked.append((rows[positions[0]].id, type(error).__name__))
                else:
                    isolate += [rows[p].id for p in positions]
            elif isinstance(error, TOPIC_REFUSALS):
                topic_refusal = topic_refusal or TopicRefused(
                    rows[positions[0]].topic, type(error).__name__
                )
            else:  # e.g. OutOfOrderSequenceNumber, after a refused batch of the partition
                other = other or error
        if parked:
            await park(connection, parked)
            self._metrics.parked.inc(len(parked))
            by_id = {row.id: row for row in rows}
            for row_id, error_name in parked:
                row = by_id[row_id]
                log.error(
                    "outbox row %d parked: the broker refused it for good (%s; topic %s, "
                    "%d bytes); list it with `python -m services.groups outbox parked`",
                    row_id,
                    error_name,
                    row.topic,
                    len(row.key or b"") + len(row.value or b""),
                )
        self._alone.difference_update(row_id for row_id, _ in parked)
        self._alone.update(isolate)
        if topic_refusal is not None:
            return topic_refusal
        if parked or isolate:
            return RowsRefused(
                f"{len(parked)} rows parked, {len(isolate)} to be sent one per batch"
            )
        assert other is not None
        return other


async def _commit_what_was_taken(
    producer: AIOKafkaProducer,
    sent: Sequence[SentBatch],
    errors: Sequence[BaseException | None],
) -> list[int]:
    """After a refusal: commit the batches the broker took, so that they are not sent
    again, when that keeps each partition's order (the broker appends nothing after a
    refused batch of a partition: a later one fails on the sequence gap); else abort.
    Returns the positions committed; the rest stays in the outbox for the next round."""
    taken: list[int] = []
    refused: set[TopicPartition] = set()
    for batch, error in zip(sent, errors, strict=True):
        if error is not None:
            refused.add(batch.partition)
        elif batch.partition in refused:  # appended after a refused one: never commit that
            await _abort(producer)
            return []
        else:
            taken += batch.positions
    if taken:
        try:
            await producer.commit_transaction()
            return taken
        except Exception as error:  # e.g. an abortable transaction: all of it goes again
            log.info("outbox relay: a refused round not committed (%s)", type(error).__name__)
    await _abort(producer)
    return []


@contextlib.asynccontextmanager
async def _notified(
    connection: AsyncConnection, channel: str, wake: Callable[[], None]
) -> AsyncIterator[None]:
    """`wake` is called when a transaction that notified `channel` commits, in any
    process: the leader publishes at once what another process's batch wrote, rather
    than at its next idle poll. Listening starts before the first round reads, so no
    commit falls between the two unseen."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection  # asyncpg's connection: it delivers notifications
    assert driver is not None

    def on_notification(*_args: object) -> None:
        wake()

    await driver.add_listener(channel, on_notification)
    try:
        yield
    finally:
        # The connection goes back to the pool: it must not go on listening.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.remove_listener(channel, on_notification), 5.0)


async def _abort(producer: AIOKafkaProducer) -> None:
    """Abort the open transaction if the producer still can (a fenced one cannot; its
    transaction is aborted by the one that fenced it)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.abort_transaction(), 10.0)


async def _close(producer: AIOKafkaProducer) -> None:
    # `stop` waits for batches still in flight; an outage must not hold up a new term.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 10.0)


# Deletes the rows of the last committed transaction and reads the next ones in id order,
# in one round trip. The read's snapshot predates the delete, hence `id <> ALL(done)`.
# Reading oldest-first (not "after the last id") also finds a row whose transaction took
# its id earlier but committed later.
_NEXT_ROUND = text(
    """
WITH gone AS (DELETE FROM outbox WHERE id = ANY(CAST(:done AS bigint[])))
SELECT id, topic, key, value, headers, created_at FROM outbox
WHERE id <> ALL(CAST(:done AS bigint[]))
ORDER BY id LIMIT :limit
"""
)
# The rows of a refused round's committed part, before the term ends.
_DELETE = text("DELETE FROM outbox WHERE id = ANY(CAST(:done AS bigint[]))")
