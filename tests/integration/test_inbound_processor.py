"""The batch processor against the real database: isolation of a failing record."""

from __future__ import annotations

import json

from sqlalchemy import select

from services.common.db import create_engine
from services.common.envelope import CloudEvent
from services.common.records import SourceRecord
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate
from services.groups.adapters.orm import dead_letters, inbox, outbox
from services.groups.service_layer.inbound import InboundProcessor, Route
from services.groups.service_layer.unit_of_work import UnitOfWork
from tests.kafka_tools import cloudevent


async def explode_on_boom(event: CloudEvent, _record: SourceRecord, uow: UnitOfWork) -> None:
    await uow.outbox.add("out", None, json.dumps(event.data).encode())
    if event.data.get("boom"):
        raise RuntimeError("a bug in a handler")


def record(offset: int, data: dict[str, object]) -> SourceRecord:
    value = json.dumps(cloudevent("test.event", data, event_id=f"e{offset}")).encode()
    return SourceRecord("in", 0, offset, None, value, ())


async def test_a_failing_record_is_isolated_and_the_rest_applied(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    await migrate.upgrade(engine)
    processor = InboundProcessor(
        lambda: UnitOfWork(engine, dlq_topic="dlq", service="test"),
        {"in": {"test.event": Route(explode_on_boom, lambda _d: None)}},
        max_event_bytes=10_000,
    )
    batch = [record(0, {"n": 0}), record(1, {"n": 1, "boom": True}), record(2, {"n": 2})]

    outcome = await processor.process(batch)
    again = await processor.process(batch)  # a redelivery of the same batch

    assert (outcome.processed, outcome.dead_lettered) == (2, 1)
    assert (again.processed, again.duplicates, again.dead_lettered) == (0, 2, 1)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(select(outbox.c.topic, outbox.c.value).order_by(outbox.c.id))
        ).all()
        letters = (await connection.execute(select(dead_letters))).all()
        processed = (await connection.execute(select(inbox.c.event_id))).scalars().all()
    applied = [json.loads(v)["n"] for t, v in rows if t == "out"]
    assert applied == [0, 2], "the failing record's own writes were rolled back"
    assert [letter.error_code for letter in letters] == ["PROCESSING_ERROR"] * 2
    assert letters[0].value == batch[1].value
    await engine.dispose()
    assert sorted(processed) == ["e0", "e2"], "a dead-lettered record stays replayable"
