"""The first end-to-end path over the real broker and database: bookings in, poison out."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import select

from services.groups.adapters.orm import bookings, dead_letters
from services.groups.bootstrap import GroupsService
from tests.kafka_tools import KafkaTestClient, cloudevent

PNR = "191212121212"


def booking_event(booking_id: str, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "booking_id": booking_id,
        "unit_id": "unit-1",
        "start_time": "2026-11-26T13:20:00+01:00",
        "customer": {"personnummer": PNR, "first_name": "Test", "last_name": "Testsson"},
        "vaccine": {"code": "J07BN01", "name": "Comirnaty", "dose": 10},
        "requested_group": {"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"},
    }
    data.update(overrides)
    return cloudevent("booking.created", data, source="/booking/system-a")


async def wait_for_rows(
    service: GroupsService, table: object, count: int, timeout: float = 30.0
) -> list[object]:
    deadline = time.monotonic() + timeout
    while True:
        async with service.engine.connect() as connection:
            rows = (await connection.execute(select(table))).all()  # type: ignore[arg-type]
        if len(rows) >= count or time.monotonic() > deadline:
            return list(rows)
        await asyncio.sleep(0.1)


async def test_booking_created_is_stored(
    groups_service: GroupsService, kafka: KafkaTestClient
) -> None:
    topic = groups_service.settings.topics.bookings
    await kafka.send_event(topic, booking_event("b-1"), key=PNR)

    rows = await wait_for_rows(groups_service, bookings, 1)

    assert len(rows) == 1
    row = rows[0]
    assert row.booking_id == "b-1"  # type: ignore[attr-defined]
    assert row.personnummer == PNR  # type: ignore[attr-defined]
    assert row.requested_group_code == "COVID_19"  # type: ignore[attr-defined]
    assert row.status == "booked"  # type: ignore[attr-defined]


async def test_malformed_record_is_dead_lettered_and_next_record_processed(
    groups_service: GroupsService, kafka: KafkaTestClient
) -> None:
    topics = groups_service.settings.topics
    poison = b'{"specversion": "1.0", "id": "x", trunc\xff'
    # Same key, so the poison and the valid record share a partition: if the poison
    # stuck the partition, the valid record would never arrive.
    await kafka.send_raw(topics.bookings, poison, key=PNR.encode(), headers=[("trace", b"abc")])
    await kafka.send_event(topics.bookings, booking_event("b-2"), key=PNR)

    stored = await wait_for_rows(groups_service, bookings, 1)
    assert [r.booking_id for r in stored] == ["b-2"]  # type: ignore[attr-defined]

    dlq = await kafka.read_until(topics.dlq, lambda records: len(records) >= 1)
    assert len(dlq) == 1
    record = dlq[0]
    assert record.value == poison
    assert record.key == PNR.encode()
    headers = dict(record.headers)
    assert headers["trace"] == b"abc"
    assert headers["dlq-error-code"] == b"INVALID_JSON"
    assert headers["dlq-source-topic"] == topics.bookings.encode()
    assert int(headers["dlq-source-offset"]) >= 0
    assert "dlq-source-partition" in headers

    letters = await wait_for_rows(groups_service, dead_letters, 1)
    assert letters[0].value == poison  # type: ignore[attr-defined]


async def test_offsets_are_committed_after_processing(
    groups_service: GroupsService, kafka: KafkaTestClient
) -> None:
    topics = groups_service.settings.topics
    await kafka.send_event(topics.bookings, booking_event("b-3"), key=PNR)
    await wait_for_rows(groups_service, bookings, 1)

    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 10
        committed = 0
        while time.monotonic() < deadline and committed < 1:
            offsets = await admin.list_consumer_group_offsets(
                groups_service.settings.groups.consumer_group
            )
            committed = sum(
                meta.offset for tp, meta in offsets.items() if tp.topic == topics.bookings
            )
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    assert committed == 1
    assert json.dumps(committed)
