"""The outbox relay against the real broker and database: which rows it reads while
earlier rounds are still unacknowledged, and that it deletes what it published."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, insert, select

from services.common.db import create_engine
from services.common.kafka import ensure_topics, start_producer
from services.groups.adapters import migrate
from services.groups.adapters.orm import outbox
from services.groups.adapters.outbox_relay import OutboxRelay
from services.groups.bootstrap import GroupsSettingsBundle
from tests.kafka_tools import KafkaTestClient


async def test_a_row_committed_after_later_ids_is_published_and_every_row_deleted(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    settings = groups_settings
    topic = settings.topics.events
    await ensure_topics(settings.topics, settings.kafka)
    engine = create_engine(settings.database)
    await migrate.upgrade(engine)
    relay = OutboxRelay(
        engine, lambda: start_producer(settings.kafka, client_id="relay-test"), batch_size=2
    )

    def row(value: bytes) -> dict[str, object]:
        return {"topic": topic, "key": b"customer-1", "value": value, "headers": []}

    late = await engine.connect()
    try:
        # This transaction takes the smallest id but commits only after later rows went out.
        late_transaction = await late.begin()
        await late.execute(insert(outbox), [row(b"late")])
        async with engine.begin() as connection:
            await connection.execute(insert(outbox), [row(f"r{n}".encode()) for n in range(5)])
        relay.start()
        first = await kafka.read_until(topic, lambda records: len(records) >= 5)
        await late_transaction.commit()
        relay.wake()
        published = await kafka.read_until(topic, lambda records: len(records) >= 6)
        left = 1
        for _ in range(100):
            async with engine.connect() as connection:
                left = await connection.scalar(select(func.count()).select_from(outbox))
            if left == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await relay.stop()
        await late.close()
        await engine.dispose()

    assert [r.value for r in first] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    assert sorted(r.value for r in published) == sorted([b"late", *(r.value for r in first)])
    assert left == 0, "every acknowledged row is deleted"
