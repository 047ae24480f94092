"""Events in, export records out: a batch is acknowledged by the broker before its
offsets are committed, so a crash at any moment re-sends, never skips.

Re-sent records carry the same key and state, so the compacted topic still converges
to the same last value per key.

Before this process gives up its partitions (a rebalance, a stop), `settle` ends the
batches in flight: published in full, or stopped and the producer closed, so none of
their records can land after those of the partitions' next owner, which starts from the
committed offset and publishes every version again in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from services.common.backoff import Backoff, retry_forever
from services.common.envelope import (
    CloudEvent,
    PoisonRecord,
    dataschema_for,
    decode_cloudevent,
    encode_json,
)
from services.common.kafka import OutgoingRecord
from services.common.records import SourceRecord, dead_letter_headers
from services.export.adapters.export_topic import ExportPublisher
from services.export.adapters.metrics import ExportMetrics
from services.export.domain.records import (
    EXPORT_SOURCE,
    MEMBERSHIP_RECORD,
    VACCINATION_RECORD,
    ExportRecord,
    RecordBuilder,
)
from services.export.service_layer.translate import records_from_event

log = logging.getLogger(__name__)
SERVICE_NAME = "export-service"
# How long a revocation waits for a batch in flight before it stops it; with the
# producer's own delivery timeout it stays well inside the group's rebalance timeout.
SETTLE_LIMIT_SECONDS = 30.0


class BatchDiscarded(Exception):
    """The batch was stopped by `settle` before all of it was published: nothing of it is
    committed, and whoever reads its partitions next reads it again."""


# CloudEvent's envelope of an export record, taken from CloudEvent itself once (attribute
# order, constant attributes); per record only id, type, dataschema, time and data are set.
# Building a CloudEvent and its dict per record cost more than encoding it.
_ENVELOPE = CloudEvent(
    id="",
    source=EXPORT_SOURCE,
    type="",
    time=datetime(2000, 1, 1, tzinfo=UTC),
    data=None,
    dataschema="",
).to_dict()
_DATASCHEMAS = {type_: dataschema_for(type_) for type_ in (MEMBERSHIP_RECORD, VACCINATION_RECORD)}


def record_value(record: ExportRecord) -> bytes:
    """The record's Kafka value; every path that publishes uses this (same state, same bytes).

    The bytes `CloudEvent.to_bytes` gives (`encode_json`), with the envelope built once:
    encoding was the largest single cost of the backfill."""
    envelope = {
        **_ENVELOPE,
        "id": record.event_id,
        "type": record.type,
        "dataschema": _DATASCHEMAS[record.type],
        # As CloudEvent.to_dict writes its time (UTC as "Z").
        "time": datetime.fromisoformat(record.updated_at).isoformat().replace("+00:00", "Z"),
        "data": record.data,
    }
    return encode_json(envelope)


def record_message(record: ExportRecord) -> tuple[bytes, bytes]:
    """The record's Kafka key and value, as the live export and the backfill publish it."""
    return record.key.encode(), record_value(record)


class ExportPipeline:
    def __init__(
        self,
        producer_factory: Callable[[], Awaitable[AIOKafkaProducer]],
        *,
        export_topic: str,
        dlq_topic: str,
        builder: RecordBuilder,
        metrics: ExportMetrics,
        max_event_bytes: int,
        settle_limit_seconds: float = SETTLE_LIMIT_SECONDS,
    ) -> None:
        self._producer_factory = producer_factory
        self._producer: AIOKafkaProducer | None = None
        self._export_topic = export_topic
        self._dlq_topic = dlq_topic
        self._builder = builder
        self._metrics = metrics
        self._max_event_bytes = max_event_bytes
        self._settle_limit = settle_limit_seconds
        self._batches: set[asyncio.Task[None]] = set()

    async def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await self._producer_factory()
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def process(
        self, records: Sequence[SourceRecord], on_published: Callable[[], None] = lambda: None
    ) -> None:
        """Publish the batch's records, retrying until the broker took them all, then call
        `on_published` (within the batch, so a revocation that waited for the batch finds
        its offsets marked). Raises `BatchDiscarded` when `settle` stopped it."""
        batch = asyncio.create_task(self._publish(records, on_published), name="export-batch")
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)
        try:
            await batch  # cancelling the caller (a stop) cancels the batch too
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if batch.cancelled() and (current is None or not current.cancelling()):
                raise BatchDiscarded from None
            raise

    async def _publish(
        self, records: Sequence[SourceRecord], on_published: Callable[[], None]
    ) -> None:
        async def attempt() -> None:
            try:
                await self._process_once(records)
            except Exception:
                await self.close()  # a fresh producer after a broker outage
                raise

        def on_retry(error: Exception, delay: float) -> None:
            log.warning("export batch failed (%s); retrying in %.1fs", type(error).__name__, delay)
            self._metrics.retries.inc()

        await retry_forever(attempt, backoff=Backoff(cap=10.0), on_retry=on_retry)
        on_published()

    async def settle(self) -> None:
        """Before the partitions go: wait for the batches in flight, `settle_limit_seconds`
        at most, then stop the rest and close the producer. Its stop delivers or expires
        every record it was handed, so once this returns nothing of a stopped batch can
        still reach the topic (and be the last value of a key the next owner moved on)."""
        batches = list(self._batches)
        if not batches:
            return
        _published, late = await asyncio.wait(batches, timeout=self._settle_limit)
        if not late:
            return
        log.warning(
            "export batch not published within %.0f s before its partitions were given up; "
            "stopped, the next owner exports it again",
            self._settle_limit,
        )
        for batch in late:
            batch.cancel()
        await asyncio.wait(late)
        await self.close()

    async def _process_once(self, records: Sequence[SourceRecord]) -> None:
        publisher = ExportPublisher(await self.producer(), self._export_topic)
        messages: list[tuple[bytes, bytes]] = []
        dead_letters: list[OutgoingRecord] = []
        counts: dict[str, int] = {}
        for source in records:
            try:
                event = decode_cloudevent(source.value, max_bytes=self._max_event_bytes)
                exported = records_from_event(event, self._builder)
            except PoisonRecord as poison:
                headers = dead_letter_headers(
                    source, poison.error_code, poison.message, SERVICE_NAME
                )
                dead_letters.append((self._dlq_topic, source.key, source.value, headers))
                continue
            for record in exported:
                messages.append(record_message(record))
                counts[record.type] = counts.get(record.type, 0) + 1
        acknowledged = await publisher.publish(messages, dead_letters=dead_letters)
        await acknowledged  # before the caller commits the batch's offsets
        for type_, count in counts.items():
            self._metrics.records.labels(type_).inc(count)
        self._metrics.dead_letters.inc(len(dead_letters))
