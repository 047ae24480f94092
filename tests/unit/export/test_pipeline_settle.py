"""Before partitions go (`ExportPipeline.settle`): a batch in flight is waited for and
its offsets are marked before settle returns; one that outlasts the limit is stopped,
its producer closed, and its caller told (`BatchDiscarded`), with nothing marked."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.common.records import SourceRecord
from services.export.adapters.metrics import ExportMetrics
from services.export.domain.records import Pseudonymizer, RecordBuilder
from services.export.service_layer.pipeline import BatchDiscarded, ExportPipeline

# Not JSON: dead-lettered, so the batch still publishes (to the dead-letter topic).
RECORD = SourceRecord("events", 0, 7, b"k", b"not json", ())


class FakeBatch:
    def __init__(self) -> None:
        self.keys: list[bytes | None] = []

    def append(self, *, key: bytes | None, **_record: Any) -> object:
        self.keys.append(key)
        return object()

    def close(self) -> None:
        pass


class SlowProducer:
    """Hands nothing to the broker until `release` is set."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.sent = 0
        self.stopped = False

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        await self.release.wait()
        self.sent += 1
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    async def stop(self) -> None:
        self.stopped = True


def pipeline(producer: SlowProducer, limit: float) -> ExportPipeline:
    async def factory() -> Any:
        return producer

    return ExportPipeline(
        factory,
        export_topic="export",
        dlq_topic="dlq",
        builder=RecordBuilder(
            Pseudonymizer(b"unit-test-pseudonym-key-0123456789"), ZoneInfo("UTC")
        ),
        metrics=ExportMetrics(),
        max_event_bytes=1024,
        settle_limit_seconds=limit,
    )


async def test_settle_waits_for_the_batch_and_its_offsets_are_marked_first() -> None:
    release = asyncio.Event()
    producer = SlowProducer(release)
    export = pipeline(producer, limit=5.0)
    marked: list[str] = []
    batch = asyncio.create_task(export.process([RECORD], lambda: marked.append("published")))
    await asyncio.sleep(0.01)
    asyncio.get_running_loop().call_later(0.05, release.set)
    await export.settle()
    assert marked == ["published"] and producer.sent == 1
    assert not producer.stopped
    await batch


async def test_a_batch_past_the_limit_is_stopped_and_its_producer_closed() -> None:
    producer = SlowProducer(asyncio.Event())  # never released
    export = pipeline(producer, limit=0.05)
    marked: list[str] = []
    batch = asyncio.create_task(export.process([RECORD], lambda: marked.append("published")))
    await asyncio.sleep(0.01)
    await export.settle()
    assert producer.stopped, "what the producer was handed is delivered or dropped by now"
    with pytest.raises(BatchDiscarded):
        await batch
    assert marked == [] and producer.sent == 0


async def test_a_stop_of_the_caller_is_not_taken_for_a_discard() -> None:
    producer = SlowProducer(asyncio.Event())
    export = pipeline(producer, limit=5.0)
    batch = asyncio.create_task(export.process([RECORD]))
    await asyncio.sleep(0.01)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    await export.settle()  # nothing left in flight
    assert not producer.stopped
