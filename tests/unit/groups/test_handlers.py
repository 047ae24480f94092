"""The handlers through the message bus and the batch applier, against a fake unit of
work: every reason code, dead letter and refusal, and prompt reuse, in milliseconds.
(`tests/integration` runs the same paths against PostgreSQL.)"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.common.records import SourceRecord
from services.common.settings import TopicSettings
from services.groups.domain.authorization import UNAUTHORIZED_MESSAGE, Authorization
from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import ERRORS_BY_REASON
from services.groups.domain.personnummer import luhn_check_digit
from services.groups.service_layer import messagebus, messages
from services.groups.service_layer.applier import BatchApplier, BatchOutcome
from services.groups.service_layer.context import CatalogHolder, Dependencies
from services.groups.service_layer.messagebus import MessageBus
from services.groups.service_layer.outgoing import membership_id_for, prompt_id_for
from tests.kafka_tools import cloudevent
from tests.unit.groups.fakes import FakeUnitOfWork, FixedClock

TOPICS = TopicSettings()
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=ZoneInfo("Europe/Stockholm"))
PNR = "191212121212"
OTHER_PNR = "19800101123" + luhn_check_digit("19800101123"[2:])[-1]
BAD_PNR = PNR[:-1] + str((int(PNR[-1]) + 1) % 10)
ACTOR = {"user_id": "nurse-1", "unit_id": "unit-1"}
_offsets = itertools.count()


@dataclass
class Service:
    uow: FakeUnitOfWork
    applier: BatchApplier

    async def send(
        self, topic: str, type_: str, data: Any, *, event_id: str | None = None, key: Any = PNR
    ) -> BatchOutcome:
        event = cloudevent(type_, data, event_id=event_id)
        record = SourceRecord(
            topic,
            0,
            next(_offsets),
            key.encode() if isinstance(key, str) else key,
            json.dumps(event).encode(),
            (),
        )
        return await self.applier.process([record])

    async def command(self, type_: str, key: Any = PNR, **data: Any) -> dict[str, Any]:
        """The command's answer (an event) after sending it."""
        before = len(self.uow.outbox.records)
        body = {"personnummer": PNR, "actor": ACTOR, **data}
        outcome = await self.send(TOPICS.commands, f"customer_group.{type_}", body, key=key)
        assert outcome.processed == 1
        [(topic, record_key, value)] = self.uow.outbox.records[before:]
        assert topic == TOPICS.events
        answer: dict[str, Any] = json.loads(value or b"")
        answer["key"] = record_key
        return answer

    async def start(self, vaccination_id: str, **data: Any) -> BatchOutcome:
        body = {
            "vaccination_id": vaccination_id,
            "unit_id": "unit-1",
            "user_id": "nurse-1",
            "personnummer": PNR,
            **data,
        }
        return await self.send(TOPICS.started, "vaccination.started", body)

    def dead_letter_codes(self) -> list[str]:
        return [code for _, code, _ in self.uow.outbox.dead_letters]


@pytest.fixture
def service(catalog: Catalog) -> Service:
    return make_service(catalog)


def make_service(catalog: Catalog) -> Service:
    """The message bus and batch applier over a fresh fake unit of work."""
    uow = FakeUnitOfWork()
    deps = Dependencies(
        clock=FixedClock(NOW),
        catalog=CatalogHolder(catalog),
        authorization=Authorization(frozenset({"unit-1", "unit-2"})),
        prompts_topic=TOPICS.prompts,
        events_topic=TOPICS.events,
    )
    bus = MessageBus(
        messagebus.message_types(TOPICS), messagebus.HANDLERS, deps, max_event_bytes=100_000
    )
    return Service(uow, BatchApplier(lambda: uow, bus))


def rejection(answer: dict[str, Any]) -> tuple[str, str | None, bytes | None]:
    assert answer["type"] == messages.REJECTED
    return answer["data"]["reason_code"], answer["data"]["personnummer"], answer["key"]


# -- commands: one rejection per reason code -----------------------------------------

COVID = {"group_code": "COVID_19", "subgroup_code": "RISKGRUPP"}
REJECTED_COMMANDS: dict[str, tuple[str, dict[str, Any]]] = {
    "INVALID_COMMAND": ("add", {"group_code": 7}),
    "UNKNOWN_GROUP": ("add", {"group_code": "NO_SUCH_GROUP"}),
    "UNKNOWN_SUBGROUP": ("add", {"group_code": "COVID_19", "subgroup_code": "NO_SUCH"}),
    "GROUP_NOT_SELECTABLE": ("add", {"group_code": "COVID"}),
    "INVALID_PERIOD": ("add", {**COVID, "valid_from": "2026-12-24"}),
    "MEMBERSHIP_NOT_FOUND": ("remove", {"membership_id": membership_id_for("never-sent")}),
    "PROMPT_NOT_FOUND": (
        "prompt_close",
        {"prompt_id": prompt_id_for("v-never"), "vaccination_id": "v-never"},
    ),
}


@pytest.mark.parametrize("reason", sorted(REJECTED_COMMANDS))
async def test_a_command_breaking_a_rule_is_rejected_with_its_reason(
    service: Service, reason: str
) -> None:
    type_, data = REJECTED_COMMANDS[reason]
    answer = await service.command(type_, **data)
    assert rejection(answer) == (reason, PNR, PNR.encode())
    assert service.uow.repo.memberships == {}
    assert service.uow.repo.audit_rows == []


async def test_every_reason_code_is_covered_here() -> None:
    covered = {
        *REJECTED_COMMANDS,
        "ALREADY_ACTIVE",
        "ALREADY_HISTORICAL",
        "INVALID_PERSONNUMMER",
        "UNAUTHORIZED",
    }
    assert covered == set(ERRORS_BY_REASON)


async def test_already_active_and_already_historical(service: Service) -> None:
    added = await service.command("add", **COVID)
    assert added["type"] == messages.ADDED
    membership_id = added["data"]["membership"]["membership_id"]
    assert rejection(await service.command("add", **COVID))[0] == "ALREADY_ACTIVE"
    removed = await service.command("remove", membership_id=membership_id)
    assert removed["type"] == messages.REMOVED
    again = await service.command("remove", membership_id=membership_id)
    assert rejection(again) == ("ALREADY_HISTORICAL", PNR, PNR.encode())
    updated = await service.command("update", membership_id=membership_id, reference_code="x")
    assert rejection(updated)[0] == "ALREADY_HISTORICAL"


async def test_a_schema_violation_is_rejected_keyed_by_a_valid_personnummer(
    service: Service,
) -> None:
    answer = await service.command("add")  # no group_code
    assert rejection(answer) == ("INVALID_COMMAND", PNR, PNR.encode())
    assert answer["data"]["message"].startswith("Invalid command: group_code")


async def test_an_invalid_personnummer_is_rejected_with_no_personnummer(service: Service) -> None:
    body = {"personnummer": BAD_PNR, "actor": ACTOR, **COVID}
    outcome = await service.send(TOPICS.commands, "customer_group.add", body, key=BAD_PNR)
    assert outcome.processed == 1
    [(_, key, value)] = service.uow.outbox.records
    assert json.loads(value or b"")["data"]["reason_code"] == "INVALID_PERSONNUMMER"
    assert json.loads(value or b"")["data"]["personnummer"] is None
    assert key is None


async def test_a_unit_off_the_list_is_refused_before_anything_else(service: Service) -> None:
    foreign = {"user_id": "x", "unit_id": "unit-foreign"}
    # Even a schema violation is answered UNAUTHORIZED: the unit is checked first.
    answer = await service.command("add", key=b"the-key", actor=foreign)
    assert rejection(answer) == ("UNAUTHORIZED", None, b"the-key")
    assert answer["data"]["message"] == UNAUTHORIZED_MESSAGE
    answer = await service.command("add", key=b"the-key", actor=foreign, **COVID)
    assert rejection(answer) == ("UNAUTHORIZED", None, b"the-key")
    assert service.uow.repo.customers == {} and service.uow.repo.audit_rows == []


async def test_a_start_from_a_unit_off_the_list_is_refused_with_no_prompt(
    service: Service,
) -> None:
    outcome = await service.start("v-1", unit_id="unit-foreign", booking_id=7)
    assert outcome.processed == 1
    [(topic, key, value)] = service.uow.outbox.records
    answer = json.loads(value or b"")
    assert (topic, key) == (TOPICS.events, PNR.encode())
    assert (answer["data"]["reason_code"], answer["data"]["personnummer"]) == (
        "UNAUTHORIZED",
        None,
    )
    assert service.uow.repo.prompts == {}


async def test_a_popup_is_closed_only_by_its_own_unit(service: Service) -> None:
    await service.start("v-1")
    close = {"prompt_id": prompt_id_for("v-1"), "vaccination_id": "v-1"}
    other_unit = {"user_id": "nurse-2", "unit_id": "unit-2"}
    answer = await service.command("prompt_close", key=b"k", actor=other_unit, **close)
    assert rejection(answer) == ("UNAUTHORIZED", None, b"k")
    confirmed = await service.command("prompt_close", **close)
    assert confirmed["type"] == messages.CONFIRMED
    assert confirmed["data"]["version"] == 1
    assert service.uow.repo.prompts[prompt_id_for("v-1")].closed_at == NOW


# -- vaccination starts -> prompts ---------------------------------------------------


async def test_a_start_is_answered_by_one_prompt_reused_byte_for_byte(service: Service) -> None:
    await service.start("v-1", vaccine={"code": "J07BN01", "name": "Comirnaty"})
    await service.start("v-1", vaccine={"code": "J07BN01", "name": "Comirnaty"})
    [first, second] = service.uow.outbox.records
    assert first == second and first[0] == TOPICS.prompts and first[1] == PNR.encode()
    prompt = json.loads(first[2] or b"")
    assert prompt["data"]["prompt_id"] == prompt_id_for("v-1")
    assert prompt["data"]["required"] is True
    assert [a["action"] for a in service.uow.repo.audit_rows] == ["prompt_shown"]


async def test_a_reused_vaccination_id_is_refused_and_no_prompt_resent(service: Service) -> None:
    await service.start("v-1")
    outcome = await service.start("v-1", personnummer=OTHER_PNR)
    assert outcome.processed == 1
    _, (topic, key, value) = service.uow.outbox.records
    answer = json.loads(value or b"")
    assert (topic, key) == (TOPICS.events, OTHER_PNR.encode())
    assert answer["data"]["reason_code"] == "INVALID_COMMAND"
    await service.start("v-1", unit_id="unit-2")
    assert json.loads(service.uow.outbox.records[-1][2] or b"")["type"] == messages.REJECTED


async def test_a_booking_request_becomes_the_first_suggestion(service: Service) -> None:
    booking = {
        "booking_id": "b-1",
        "unit_id": "unit-1",
        "start_time": "2026-11-26T10:00:00+01:00",
        "customer": {"personnummer": PNR, "first_name": "Tolvan"},
        "requested_group": {"group_code": "INFLUENSA", "subgroup_code": "RISKGRUPP"},
    }
    assert (await service.send(TOPICS.bookings, "booking.created", booking)).processed == 1
    await service.start("v-1", booking_id="b-1")
    prompt = json.loads(service.uow.outbox.records[0][2] or b"")
    assert prompt["data"]["suggestions"][0] == {
        "group_code": "INFLUENSA",
        "subgroup_code": "RISKGRUPP",
        "reason": "REQUESTED_AT_BOOKING",
    }
    await service.send(TOPICS.bookings, "booking.cancelled", {"booking_id": "b-1", "unit_id": "u"})
    assert service.uow.repo.bookings["b-1"].status == "cancelled"


# -- dead letters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "type_", "data", "code"),
    [
        (TOPICS.started, "vaccination.started", {"vaccination_id": "v"}, "SCHEMA_VIOLATION"),
        (TOPICS.bookings, "booking.cancelled", {"booking_id": "b"}, "SCHEMA_VIOLATION"),
        (
            TOPICS.started,
            "vaccination.started",
            {"vaccination_id": "v", "unit_id": "unit-1", "user_id": "u", "personnummer": BAD_PNR},
            "INVALID_PERSONNUMMER",
        ),
        (TOPICS.bookings, "customer_group.add", {}, "UNKNOWN_TYPE"),
    ],
)
async def test_a_booking_or_start_that_cannot_be_applied_is_a_dead_letter(
    service: Service, topic: str, type_: str, data: dict[str, Any], code: str
) -> None:
    outcome = await service.send(topic, type_, data)
    assert (outcome.processed, outcome.dead_lettered) == (0, 1)
    assert service.dead_letter_codes() == [code]
    assert service.uow.processed == set(), "a dead letter stays replayable"


async def test_a_redelivered_command_changes_nothing(service: Service) -> None:
    body = {"personnummer": PNR, "actor": ACTOR, **COVID}
    first = await service.send(TOPICS.commands, "customer_group.add", body, event_id="c-1")
    again = await service.send(TOPICS.commands, "customer_group.add", body, event_id="c-1")
    assert (first.processed, again.duplicates) == (1, 1)
    assert list(service.uow.repo.memberships) == [membership_id_for("c-1")]
    assert len(service.uow.outbox.records) == 1
    assert service.uow.repo.memberships[membership_id_for("c-1")][1].valid_from == date(
        2026, 11, 26
    )
