"""Redelivery of every input type changes nothing twice; bad records go to the DLQ."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import func, select

from services.groups.adapters.orm import (
    audit_log,
    bookings,
    inbox,
    memberships,
    prompts,
    vaccination_confirmations,
)
from services.groups.bootstrap import GroupsService
from tests.integration.conftest import ACTOR, NurseClient, wait_until_booked
from tests.kafka_tools import TopicCollector, cloudevent

PNR = "191212121212"


async def count(service: GroupsService, table: object) -> int:
    async with service.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)))  # type: ignore[arg-type]


async def settle(service: GroupsService, expected_inbox: int) -> None:
    """Wait until the service applied `expected_inbox` distinct events."""
    for _ in range(300):
        if await count(service, inbox) >= expected_inbox:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("events were not applied")


async def test_every_input_type_redelivered_has_one_effect(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    topics = nurse.topics
    booking = await nurse.book("b-redeliver", PNR)
    await nurse.kafka.send_event(topics.bookings, booking, key=PNR)  # same event id again

    first = await nurse.start("v-redeliver", PNR, event_id="start-1")
    start_again = cloudevent(
        "vaccination.started",
        {
            "vaccination_id": "v-redeliver",
            "unit_id": "unit-1",
            "user_id": "nurse-1",
            "personnummer": PNR,
        },
        event_id="start-2",
    )
    await nurse.kafka.send_event(topics.started, start_again, key=PNR)
    prompts_sent = await nurse.prompts.wait_for(
        lambda e: e["data"]["vaccination_id"] == "v-redeliver", count=2
    )
    # A start seen again (another event id, same vaccination) re-sends the same prompt.
    assert prompts_sent[0] == prompts_sent[1] == first
    prompt_id = first["data"]["prompt_id"]

    added = await nurse.command(
        "add",
        PNR,
        command_id="cmd-add",
        group_code="OVRIGT",
        subgroup_code="RESEVACCINATIONER",
        prompt_id=prompt_id,
    )
    membership_id = added["data"]["membership"]["membership_id"]
    await nurse.command(
        "update", PNR, command_id="cmd-update", membership_id=membership_id, reference_code="R1"
    )
    await nurse.command(
        "prompt_close",
        PNR,
        command_id="cmd-close",
        prompt_id=prompt_id,
        vaccination_id="v-redeliver",
    )
    await nurse.command("remove", PNR, command_id="cmd-remove", membership_id=membership_id)

    # Every command delivered a second time, with the same id.
    for command_id, type_, fields in [
        ("cmd-add", "add", {"group_code": "OVRIGT", "subgroup_code": "RESEVACCINATIONER"}),
        ("cmd-update", "update", {"membership_id": membership_id, "reference_code": "R1"}),
        ("cmd-close", "prompt_close", {"prompt_id": prompt_id, "vaccination_id": "v-redeliver"}),
        ("cmd-remove", "remove", {"membership_id": membership_id}),
    ]:
        event = cloudevent(
            f"customer_group.{type_}",
            {"personnummer": PNR, "actor": ACTOR, **fields},
            event_id=command_id,
        )
        await nurse.kafka.send_event(topics.commands, event, key=PNR)
    # A registration delivered twice; the one after it is answered once both were applied.
    registered = await nurse.register("v-registered", PNR, event_id="reg-1")
    await nurse.answer(registered)
    await nurse.kafka.send_event(topics.registered, registered, key=PNR)
    await nurse.answer(await nurse.register("v-registered-2", PNR, event_id="reg-2"))
    marker = await nurse.command("add", PNR, command_id="cmd-marker", group_code="INFLUENSA")
    assert marker["type"] == "customer_group.added"  # everything before it was applied

    by_command: dict[str, int] = {}
    for event in nurse.events.events:
        command_id = event["data"].get("command_id")
        by_command[command_id] = by_command.get(command_id, 0) + 1
    assert by_command == {
        "cmd-add": 1,
        "cmd-update": 1,
        "cmd-close": 1,
        "cmd-remove": 1,
        "reg-1": 1,
        "reg-2": 1,
        "cmd-marker": 1,
        # The marker's group covers the three doses' day: each is confirmed again.
        None: 3,
    }
    assert await count(groups_service, bookings) == 1
    assert await count(groups_service, prompts) == 1
    assert await count(groups_service, memberships) == 2
    assert await count(groups_service, vaccination_confirmations) == 3
    async with groups_service.engine.connect() as connection:
        version = await connection.scalar(
            select(memberships.c.version).where(memberships.c.membership_id == membership_id)
        )
    assert version == 3


async def test_bad_records_are_dead_lettered_and_processing_goes_on(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    topics = nurse.topics
    bad: list[tuple[str, bytes, str]] = [
        (topics.bookings, b"\x00\x01 not json", "INVALID_JSON"),
        (topics.bookings, b"[1, 2, 3]", "NOT_A_CLOUDEVENT"),
        (
            topics.bookings,
            json.dumps(
                {"specversion": "0.3", "id": "a", "source": "s", "type": "booking.created"}
            ).encode(),
            "NOT_A_CLOUDEVENT",
        ),
        (
            topics.commands,
            json.dumps(cloudevent("customer_group.delete", {})).encode(),
            "UNKNOWN_TYPE",
        ),
        (topics.started, json.dumps(cloudevent("booking.created", {})).encode(), "UNKNOWN_TYPE"),
        (
            topics.started,
            json.dumps(cloudevent("vaccination.started", {"vaccination_id": "v"})).encode(),
            "SCHEMA_VIOLATION",
        ),
        (
            topics.bookings,
            json.dumps(
                cloudevent(
                    "booking.created",
                    {
                        "booking_id": "b",
                        "unit_id": "u",
                        "start_time": "2026-11-26T10:00:00Z",
                        "customer": {"personnummer": "191212121213"},
                    },
                )
            ).encode(),
            "INVALID_PERSONNUMMER",
        ),
        (
            topics.bookings,
            json.dumps(
                cloudevent(
                    "booking.created",
                    {
                        "booking_id": "b",
                        "unit_id": "u",
                        "start_time": "not a time",
                        "customer": {"personnummer": PNR},
                    },
                )
            ).encode(),
            "SCHEMA_VIOLATION",
        ),
    ]
    for topic, value, _code in bad:
        await nurse.kafka.send_raw(topic, value, key=PNR.encode())
    await nurse.book("b-after-poison", PNR)
    added = await nurse.command("add", PNR, group_code="COVID_19")
    assert added["type"] == "customer_group.added"

    async with TopicCollector(nurse.kafka.bootstrap, topics.dlq) as dlq:
        records = await dlq.wait_records(len(bad))
    assert sorted(r.value for r in records) == sorted(v for _t, v, _c in bad)
    codes = {r.value: dict(r.headers)["dlq-error-code"].decode() for r in records}
    for _topic, value, code in bad:
        assert codes[value] == code, (value, codes[value])
    assert await count(groups_service, bookings) == 1


async def test_a_dead_letter_keeps_header_names_jsonb_cannot_hold(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    headers = [("trace\x00id", b"\x00\x01"), ("plain", b"ok")]
    bookings_topic = nurse.topics.bookings
    await nurse.kafka.send_raw(bookings_topic, b"not json", key=PNR.encode(), headers=headers)
    await nurse.book("b-after-odd-header", PNR)  # and processing goes on

    async with TopicCollector(nurse.kafka.bootstrap, nurse.topics.dlq) as dlq:
        (record,) = await dlq.wait_records(1)
    assert record.value == b"not json"
    assert list(record.headers)[:2] == headers
    assert dict(record.headers)["dlq-error-code"] == b"INVALID_JSON"
    await wait_until_booked(groups_service, "b-after-odd-header")


async def test_changes_and_reads_are_in_the_pdl_audit_log(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    prompt = (await nurse.start("v-audit", PNR))["data"]
    added = await nurse.command("add", PNR, group_code="COVID_19", prompt_id=prompt["prompt_id"])
    await nurse.command("remove", PNR, membership_id=added["data"]["membership"]["membership_id"])
    async with groups_service.engine.connect() as connection:
        rows = (await connection.execute(select(audit_log).order_by(audit_log.c.id))).all()
    assert [r.action for r in rows] == [
        "prompt_shown",
        "customer_group.add",
        "customer_group.remove",
    ]
    assert {(r.user_id, r.unit_id, r.personnummer) for r in rows} == {("nurse-1", "unit-1", PNR)}
