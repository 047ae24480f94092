"""The batch processor against the real database: isolation of a failing record, and
the writes of one batch."""

from __future__ import annotations

import json

import pytest
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


COVID = {"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"}
FLU = {"group_code": "INFLUENSA", "subgroup_code": "ALDER_65_PLUS"}
FIRST, SECOND = membership_id_for("command-1"), membership_id_for("command-2")
# Stored before the batch: COVID_19 (command-1) and INFLUENSA (command-2), both active.
# Each batch frees an active place in a group that another of its rows takes.
FREEING_BATCHES: dict[str, list[tuple[str, dict[str, object]]]] = {
    "ended, then added again": [("remove", {"membership_id": FIRST}), ("add", COVID)],
    "entered in error, then added again": [
        ("remove", {"membership_id": FIRST, "reason": "entered_in_error"}),
        ("add", COVID),
    ],
    "corrected into another group, then added again": [
        ("remove", {"membership_id": SECOND}),
        ("update", {"membership_id": FIRST, **FLU}),
        ("add", COVID),
    ],
    "ended, then another corrected into its group": [
        ("remove", {"membership_id": SECOND}),
        ("update", {"membership_id": FIRST, **FLU}),
    ],
}


@pytest.mark.parametrize("batch", list(FREEING_BATCHES))
async def test_a_batch_that_frees_an_active_place_another_row_takes(
    groups_settings: GroupsSettingsBundle, batch: str
) -> None:
    """The batch's writes go out in one statement, except that a membership leaving its
    group's one active place must be written before another takes it (one active row per
    customer and group), in one attempt, not by the applier's one-by-one replay."""
    service = GroupsService(groups_settings)
    await service.prepare()
    commands = service.settings.topics.commands

    def command(offset: int, type_: str, fields: dict[str, object]) -> SourceRecord:
        event = cloudevent(
            f"customer_group.{type_}",
            {"personnummer": PNR, "actor": ACTOR, **fields},
            event_id=f"command-{offset}",
        )
        return SourceRecord(commands, 0, offset, PNR.encode(), json.dumps(event).encode(), ())

    steps = FREEING_BATCHES[batch]
    try:
        first = await service.processor.process([command(1, "add", COVID), command(2, "add", FLU)])
        again = await service.processor.process(
            [command(offset, type_, fields) for offset, (type_, fields) in enumerate(steps, 3)]
        )
        async with service.engine.connect() as connection:
            active = (
                await connection.execute(
                    select(memberships.c.group_code, memberships.c.membership_id)
                    .where(memberships.c.personnummer == PNR, memberships.c.status == "active")
                    .order_by(memberships.c.group_code)
                )
            ).all()
            answers = (
                await connection.execute(
                    select(outbox.c.value).where(outbox.c.topic == service.settings.topics.events)
                )
            ).scalars()
            types = [json.loads(value)["type"] for value in answers]
    finally:
        await service.engine.dispose()

    assert (first.processed, again.processed, again.dead_lettered) == (2, len(steps), 0)
    assert again.attempts == 1, "applied as one batch"
    assert "customer_group.command_rejected" not in types
    readded = membership_id_for(f"command-{len(steps) + 2}")
    expected = {
        "ended, then added again": [("COVID_19", readded), ("INFLUENSA", SECOND)],
        "entered in error, then added again": [("COVID_19", readded), ("INFLUENSA", SECOND)],
        "corrected into another group, then added again": [
            ("COVID_19", readded),
            ("INFLUENSA", FIRST),
        ],
        "ended, then another corrected into its group": [("INFLUENSA", FIRST)],
    }[batch]
    assert [tuple(row) for row in active] == expected
