"""The batch processor against the real database: isolation of a failing record, and
the writes of one batch."""

from __future__ import annotations

import json

from sqlalchemy import select

from services.common.db import create_engine
from services.common.records import SourceRecord
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate
from services.groups.adapters.orm import dead_letters, inbox, memberships, outbox
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle, read_catalog_file
from services.groups.catalog import default_catalog_path
from services.groups.domain.authorization import Authorization
from services.groups.service_layer.applier import BatchApplier
from services.groups.service_layer.commands import Message, PreloadKeys
from services.groups.service_layer.context import CatalogHolder, Clock, Context, Dependencies
from services.groups.service_layer.messagebus import MessageBus
from services.groups.service_layer.outgoing import membership_id_for
from services.groups.service_layer.unit_of_work import UnitOfWork
from tests.integration.conftest import ACTOR
from tests.kafka_tools import cloudevent

PNR = "191212121212"


class ProbeEvent(Message):
    n: int
    boom: bool = False

    def subjects(self) -> tuple[str, ...]:
        return ()

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        return None


async def explode_on_boom(event: ProbeEvent, _context: Context, uow: UnitOfWork) -> None:
    await uow.outbox.add("out", None, json.dumps(event.model_dump(exclude_unset=True)).encode())
    if event.boom:
        raise RuntimeError("a bug in a handler")


def record(offset: int, data: dict[str, object]) -> SourceRecord:
    value = json.dumps(cloudevent("test.event", data, event_id=f"e{offset}")).encode()
    return SourceRecord("in", 0, offset, None, value, ())


async def test_a_failing_record_is_isolated_and_the_rest_applied(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    await migrate.upgrade(engine)
    processor = BatchApplier(
        lambda: UnitOfWork(engine, dlq_topic="dlq", service="test"),
        MessageBus(
            {"in": {"test.event": ProbeEvent}},
            {ProbeEvent: explode_on_boom},
            Dependencies(
                Clock(),
                CatalogHolder(read_catalog_file(default_catalog_path())),
                Authorization(None),
                "prompts",
                "events",
            ),
            max_event_bytes=10_000,
        ),
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


async def test_a_group_ended_and_started_again_in_one_batch(
    groups_settings: GroupsSettingsBundle,
) -> None:
    """The batch's writes go out in one statement, except that a membership ended here
    must be written before its group starts again (one active row per group)."""
    service = GroupsService(groups_settings)
    await service.prepare()
    commands = service.settings.topics.commands

    def command(offset: int, type_: str, **fields: object) -> SourceRecord:
        event = cloudevent(
            f"customer_group.{type_}",
            {"personnummer": PNR, "actor": ACTOR, **fields},
            event_id=f"command-{offset}",
        )
        return SourceRecord(commands, 0, offset, PNR.encode(), json.dumps(event).encode(), ())

    covid = {"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"}
    try:
        first = await service.processor.process([command(1, "add", **covid)])
        again = await service.processor.process(
            [
                command(2, "remove", membership_id=membership_id_for("command-1")),
                command(3, "add", **covid),
            ]
        )
        async with service.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(memberships.c.membership_id, memberships.c.valid_to)
                    .where(memberships.c.personnummer == PNR)
                    .order_by(memberships.c.created_at)
                )
            ).all()
            answers = (
                await connection.execute(
                    select(outbox.c.value).where(outbox.c.topic == service.settings.topics.events)
                )
            ).scalars()
            types = sorted(json.loads(value)["type"] for value in answers)
    finally:
        await service.engine.dispose()

    assert (first.processed, again.processed, again.dead_lettered) == (1, 2, 0)
    assert [(row.membership_id, row.valid_to is None) for row in rows] == [
        (membership_id_for("command-1"), False),
        (membership_id_for("command-3"), True),
    ]
    assert types == [
        "customer_group.added",
        "customer_group.added",
        "customer_group.removed",
    ]
