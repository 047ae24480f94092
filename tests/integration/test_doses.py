"""The dose-level record over the real broker and database: doses registered with and
without the popup, in either order with the close, registered again, entered in error,
refused and dead-lettered, and confirmed again when a membership changes."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from devinfra.provider import Infrastructure
from services.common.settings import GroupsSettings
from services.groups.adapters.orm import vaccination_confirmations
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.domain.authorization import UNAUTHORIZED_MESSAGE
from tests.integration.conftest import (
    ACTOR,
    NurseClient,
    nurse_client,
    running_groups_service,
)
from tests.kafka_tools import KafkaTestClient, TopicCollector, cloudevent

PNR = "191212121212"
STOCKHOLM = ZoneInfo("Europe/Stockholm")
COVID = {"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"}
FLU = {"group_code": "INFLUENSA", "subgroup_code": "ALDER_65_PLUS"}
CONFIRMED = "customer_group.vaccination_groups_confirmed"


def today() -> date:
    return datetime.now(STOCKHOLM).date()


def days_ago(days: int) -> str:
    return (today() - timedelta(days=days)).isoformat()


def given_days_ago(days: int) -> str:
    """An instant at 10:00 Stockholm time, `days` days back."""
    day = today() - timedelta(days=days)
    return datetime(day.year, day.month, day.day, 10, tzinfo=STOCKHOLM).isoformat()


def codes(event: dict[str, Any]) -> list[str]:
    return [m["group_code"] for m in event["data"]["memberships"]]


def confirmations(nurse: NurseClient, vaccination_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in nurse.events.events
        if e["type"] == CONFIRMED and e["data"]["vaccination_id"] == vaccination_id
    ]


async def stored_version(service: GroupsService, vaccination_id: str) -> int | None:
    async with service.engine.connect() as connection:
        version: int | None = await connection.scalar(
            select(vaccination_confirmations.c.version).where(
                vaccination_confirmations.c.vaccination_id == vaccination_id
            )
        )
    return version


async def test_a_dose_registered_with_no_popup_at_all(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    await nurse.command("add", PNR, **COVID, valid_from=days_ago(30))
    await nurse.command("add", PNR, **FLU)  # from today only
    # An after-registration, three weeks back: the groups of that day, not of today.
    sent = await nurse.register("v-no-popup", PNR, administered_at=given_days_ago(21))
    confirmed = await nurse.answer(sent)
    assert confirmed["type"] == CONFIRMED
    data = confirmed["data"]
    assert (data["basis"], data["status"], data["version"]) == ("registration", "completed", 1)
    assert (data["prompt_id"], data["confirmed_at"]) == (None, None)
    assert data["actor"] == ACTOR and data["unit_id"] == ACTOR["unit_id"]
    assert datetime.fromisoformat(data["administered_at"]) == datetime.fromisoformat(
        given_days_ago(21)
    )
    assert data["vaccine"] == {"code": "J07BN01", "name": "Comirnaty", "dose_number": 1}
    assert codes(confirmed) == ["COVID_19"] and data["missing_group"] is False
    assert await stored_version(groups_service, "v-no-popup") == 1


async def test_close_then_registration_and_registration_then_close_give_the_same_groups(
    nurse: NurseClient,
) -> None:
    old = await nurse.command("add", PNR, **FLU, valid_from=days_ago(10))
    membership_id = old["data"]["membership"]["membership_id"]
    # Ended yesterday: it applied on the day of the dose, no longer on the day of the close.
    await nurse.command("remove", PNR, membership_id=membership_id, valid_to=days_ago(1))
    await nurse.command("add", PNR, **COVID)
    finals = {}
    for vaccination_id, close_first in (("v-close-first", True), ("v-register-first", False)):
        prompt = (await nurse.start(vaccination_id, PNR))["data"]
        close = {"prompt_id": prompt["prompt_id"], "vaccination_id": vaccination_id}
        registration = {"administered_at": given_days_ago(2)}
        if close_first:
            by_close = await nurse.command("prompt_close", PNR, **close)
            assert (by_close["data"]["basis"], codes(by_close)) == ("popup", ["COVID_19"])
            last = await nurse.answer(await nurse.register(vaccination_id, PNR, **registration))
        else:
            first = await nurse.answer(await nurse.register(vaccination_id, PNR, **registration))
            assert first["data"]["confirmed_at"] is None
            last = await nurse.command("prompt_close", PNR, **close)
        finals[vaccination_id] = last["data"]
    for data in finals.values():
        assert (data["basis"], data["version"]) == ("registration", 2)
        assert [m["group_code"] for m in data["memberships"]] == ["INFLUENSA"]
        assert data["confirmed_at"] is not None and data["prompt_id"] is not None
    first, second = finals.values()
    assert first["memberships"] == second["memberships"]


async def test_a_registration_again_changes_nothing_unless_its_content_changed(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    await nurse.command("add", PNR, **COVID)
    given = given_days_ago(0)
    first = await nurse.answer(await nurse.register("v-again", PNR, administered_at=given))
    assert first["data"]["version"] == 1
    # The same content under a new event id (and the instant with another offset).
    utc = datetime.fromisoformat(given).astimezone(ZoneInfo("UTC")).isoformat()
    repeated = await nurse.register("v-again", PNR, administered_at=utc)
    # Registrations of one customer are applied in order: once this one is answered,
    # the repeated one was applied before it.
    marker = await nurse.answer(await nurse.register("v-marker", PNR))
    assert marker["data"]["vaccination_id"] == "v-marker"
    assert not [e for e in nurse.events.events if e["data"].get("command_id") == repeated["id"]]
    assert len(confirmations(nurse, "v-again")) == 1
    assert await stored_version(groups_service, "v-again") == 1
    # A corrected time: the record is replaced, version + 1.
    corrected_at = given_days_ago(1)
    corrected = await nurse.answer(
        await nurse.register("v-again", PNR, administered_at=corrected_at)
    )
    assert corrected["data"]["version"] == 2
    assert datetime.fromisoformat(corrected["data"]["administered_at"]) == datetime.fromisoformat(
        corrected_at
    )
    assert codes(corrected) == [], "the group started today, after the corrected day"
    assert corrected["data"]["missing_group"] is True
    assert await stored_version(groups_service, "v-again") == 2


async def test_a_dose_registered_by_mistake_is_entered_in_error(nurse: NurseClient) -> None:
    await nurse.command("add", PNR, **COVID)
    given = given_days_ago(0)
    await nurse.answer(await nurse.register("v-mistake", PNR, administered_at=given))
    wrong = await nurse.answer(
        await nurse.register("v-mistake", PNR, administered_at=given, status="entered_in_error")
    )
    data = wrong["data"]
    assert (data["status"], data["version"], data["memberships"], data["missing_group"]) == (
        "entered_in_error",
        2,
        [],
        False,
    )


async def test_a_correction_after_the_dose_confirms_it_again(nurse: NurseClient) -> None:
    added = await nurse.command("add", PNR, **FLU, valid_from=days_ago(20))
    membership_id = added["data"]["membership"]["membership_id"]
    first = await nurse.answer(
        await nurse.register("v-corrected", PNR, administered_at=given_days_ago(7))
    )
    assert codes(first) == ["INFLUENSA"]
    # The pencil: a wrong group corrected in place, after the dose.
    update = await nurse.command(
        "update", PNR, membership_id=membership_id, group_code="PNEUMOKOCK", subgroup_code=None
    )
    assert update["type"] == "customer_group.updated"
    [again] = await nurse.events.wait_for(
        lambda e: (
            e["type"] == CONFIRMED
            and e["data"]["vaccination_id"] == "v-corrected"
            and e["data"]["version"] == 2
        )
    )
    data = again["data"]
    assert (data["command_id"], data["actor"], data["basis"]) == (None, None, "registration")
    assert [(m["group_code"], m["subgroup_code"]) for m in data["memberships"]] == [
        ("PNEUMOKOCK", None)
    ]
    # An end before the dose's day removes the group from it.
    await nurse.command("remove", PNR, membership_id=membership_id, valid_to=days_ago(8))
    [third] = await nurse.events.wait_for(
        lambda e: (
            e["type"] == CONFIRMED
            and e["data"]["vaccination_id"] == "v-corrected"
            and e["data"]["version"] == 3
        )
    )
    assert third["data"]["memberships"] == [] and third["data"]["missing_group"] is True


async def test_a_malformed_registration_is_dead_lettered_with_its_original_bytes(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    topic = nurse.topics.registered
    no_time = cloudevent(
        "vaccination.registered",
        {"vaccination_id": "v-bad", "unit_id": "unit-1", "user_id": "u", "personnummer": PNR,
         "vaccine": {"code": "J07BN01", "name": "Comirnaty"}},
    )  # fmt: skip
    bad_pnr = cloudevent(
        "vaccination.registered",
        {**no_time["data"], "personnummer": "191212121213", "administered_at": given_days_ago(0)},
    )
    bad = [
        (json.dumps(no_time).encode(), "SCHEMA_VIOLATION"),
        (json.dumps(bad_pnr).encode(), "INVALID_PERSONNUMMER"),
        (json.dumps(cloudevent("vaccination.started", {})).encode(), "UNKNOWN_TYPE"),
    ]
    for value, _code in bad:
        await nurse.kafka.send_raw(topic, value, key=PNR.encode())
    # Processing goes on.
    after = await nurse.answer(await nurse.register("v-after-bad", PNR))
    assert after["type"] == CONFIRMED
    async with TopicCollector(nurse.kafka.bootstrap, nurse.topics.dlq) as dlq:
        records = await dlq.wait_records(len(bad))
    assert sorted(r.value for r in records) == sorted(v for v, _c in bad)
    for record in records:
        headers = dict(record.headers)
        assert record.key == PNR.encode()
        assert headers["dlq-source-topic"].decode() == topic
        assert headers["dlq-error-code"].decode() == dict(bad)[record.value]
    assert await stored_version(groups_service, "v-bad") is None


async def test_a_registration_from_a_unit_off_the_list_is_unauthorized(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, infra: Infrastructure
) -> None:
    groups_settings.groups = GroupsSettings(
        consumer_group=groups_settings.groups.consumer_group, allowed_units="unit-1"
    )
    async with (
        running_groups_service(groups_settings) as service,
        nurse_client(service, kafka, infra) as nurse,
    ):
        refused = await nurse.register("v-outsider", PNR, unit_id="unit-2")
        answer = await nurse.answer(refused)
        assert answer["type"] == "customer_group.command_rejected"
        assert answer["data"] == {
            "command_id": refused["id"],
            "personnummer": None,
            "reason_code": "UNAUTHORIZED",
            "message": UNAUTHORIZED_MESSAGE,
        }
        [record] = [r for r in nurse.events.records if json.loads(r.value)["id"] == answer["id"]]
        assert record.key == PNR.encode(), "keyed as the refused record was"
        allowed = await nurse.answer(await nurse.register("v-insider", PNR))
        assert allowed["type"] == CONFIRMED
    assert await stored_version(service, "v-outsider") is None
