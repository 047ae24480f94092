"""The dose-level record through the message bus and the batch applier, against the fake
unit of work: registrations with and without a popup, in either order with the close,
re-registrations, refusals and dead letters, and re-confirmation after membership changes.
(`tests/integration/test_doses.py` runs the same over the real broker and database.)"""

from __future__ import annotations

import json
from datetime import UTC, date, timedelta
from typing import Any

import pytest

from services.groups.domain.authorization import Authorization
from services.groups.domain.catalog import Catalog
from services.groups.domain.doses import Basis, DoseStatus
from services.groups.domain.membership import Customer, Membership
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import messages
from services.groups.service_layer.context import CatalogHolder, Dependencies
from services.groups.service_layer.doses import reconfirm_doses
from services.groups.service_layer.outgoing import event_id, prompt_id_for
from tests.unit.groups.fakes import FixedClock
from tests.unit.groups.test_handlers import (
    ACTOR,
    BAD_PNR,
    NOW,
    OTHER_PNR,
    PNR,
    TOPICS,
    Service,
    make_service,
)

TODAY = NOW.date()
COVID = {"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"}
FLU = {"group_code": "INFLUENSA", "subgroup_code": "ALDER_65_PLUS"}


@pytest.fixture
def service(catalog: Catalog) -> Service:
    return make_service(catalog)


def registration(vaccination_id: str = "v-1", **changes: Any) -> dict[str, Any]:
    body = {
        "vaccination_id": vaccination_id,
        "unit_id": "unit-1",
        "user_id": "nurse-1",
        "personnummer": PNR,
        "administered_at": NOW.isoformat(),
        "vaccine": {"code": "J07BN01", "name": "Comirnaty", "dose_number": 3},
    }
    for name, value in changes.items():
        if value is ...:
            body.pop(name)
        else:
            body[name] = value
    return body


def sent(service: Service, since: int = 0) -> list[dict[str, Any]]:
    """The events published since `since` records, decoded, with their record key."""
    found = []
    for topic, key, value in service.uow.outbox.records[since:]:
        if topic == TOPICS.events:
            event = json.loads(value or b"")
            event["key"] = key
            found.append(event)
    return found


async def register(
    service: Service, event_id: str | None = None, **changes: Any
) -> list[dict[str, Any]]:
    before = len(service.uow.outbox.records)
    body = registration(**changes)
    outcome = await service.send(
        TOPICS.registered, "vaccination.registered", body, event_id=event_id
    )
    assert outcome.processed + outcome.dead_lettered + outcome.duplicates == 1
    return sent(service, before)


async def command(service: Service, type_: str, **data: Any) -> list[dict[str, Any]]:
    """Every event a command caused: its answer, then any re-confirmations."""
    before = len(service.uow.outbox.records)
    body = {"personnummer": PNR, "actor": ACTOR, **data}
    outcome = await service.send(TOPICS.commands, f"customer_group.{type_}", body)
    assert outcome.processed == 1
    return sent(service, before)


async def add(service: Service, **data: Any) -> str:
    [added, *_] = await command(service, "add", **data)
    assert added["type"] == messages.ADDED, added["data"]
    membership_id: str = added["data"]["membership"]["membership_id"]
    return membership_id


async def close(service: Service, vaccination_id: str = "v-1") -> dict[str, Any]:
    answer = {"prompt_id": prompt_id_for(vaccination_id), "vaccination_id": vaccination_id}
    [confirmed] = await command(service, "prompt_close", **answer)
    assert confirmed["type"] == messages.CONFIRMED, confirmed["data"]
    return confirmed


def groups(event: dict[str, Any]) -> list[str]:
    return [m["group_code"] for m in event["data"]["memberships"]]


# -- registrations --------------------------------------------------------------------


async def test_a_dose_registered_without_a_popup_gets_its_record(service: Service) -> None:
    await add(service, **COVID)
    [confirmed] = await register(service, event_id="r-1")
    assert confirmed["type"] == messages.CONFIRMED and confirmed["key"] == PNR.encode()
    assert confirmed["id"] == event_id(messages.CONFIRMED, "r-1")
    data = confirmed["data"]
    assert data == {
        "command_id": "r-1",
        "prompt_id": None,
        "vaccination_id": "v-1",
        "personnummer": PNR,
        "unit_id": "unit-1",
        "actor": {"user_id": "nurse-1", "unit_id": "unit-1"},
        "basis": "registration",
        "status": "completed",
        "confirmed_at": None,
        "administered_at": NOW.isoformat(),
        "vaccine": {"code": "J07BN01", "name": "Comirnaty", "dose_number": 3},
        "memberships": data["memberships"],
        "missing_group": False,
        "version": 1,
    }
    assert groups(confirmed) == ["COVID_19"]
    dose = service.uow.repo.doses["v-1"]
    assert (dose.basis, dose.version, dose.prompt_id) == (Basis.REGISTRATION, 1, None)
    audit = service.uow.repo.audit_rows[-1]
    assert (audit["action"], audit["user_id"], audit["personnummer"]) == (
        "vaccination.registered",
        "nurse-1",
        PNR,
    )


async def test_an_after_registration_takes_the_groups_of_the_dose_day(service: Service) -> None:
    three_weeks_back = NOW - timedelta(days=21)
    await add(service, **COVID, valid_from=(TODAY - timedelta(days=30)).isoformat())
    await add(service, **FLU)  # from today: did not apply three weeks ago
    [confirmed] = await register(service, administered_at=three_weeks_back.isoformat())
    assert groups(confirmed) == ["COVID_19"]
    assert confirmed["data"]["administered_at"] == three_weeks_back.isoformat()


async def test_a_dose_no_group_covers_is_missing_a_group(service: Service) -> None:
    await add(service, **FLU)
    [confirmed] = await register(service, administered_at=(NOW - timedelta(days=1)).isoformat())
    assert confirmed["data"]["memberships"] == [] and confirmed["data"]["missing_group"] is True


@pytest.mark.parametrize("order", ["close first", "registration first"])
async def test_close_and_registration_give_the_same_groups_in_either_order(
    service: Service, order: str
) -> None:
    await service.start("v-1")
    # Ended yesterday: applied on the day of the dose, not on the day of the close.
    old = await add(service, **FLU, valid_from=(TODAY - timedelta(days=10)).isoformat())
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    await command(service, "remove", membership_id=old, valid_to=yesterday)
    await add(service, **COVID)
    given = (NOW - timedelta(days=2)).isoformat()
    if order == "close first":
        by_close = await close(service)
        assert (by_close["data"]["basis"], groups(by_close)) == ("popup", ["COVID_19"])
        [last] = await register(service, administered_at=given)
    else:
        [by_registration] = await register(service, administered_at=given)
        assert by_registration["data"]["confirmed_at"] is None
        last = await close(service)
    data = last["data"]
    assert (data["basis"], data["version"], groups(last)) == ("registration", 2, ["INFLUENSA"])
    assert data["confirmed_at"] == NOW.isoformat() and data["administered_at"] == given
    assert data["prompt_id"] == prompt_id_for("v-1")


async def test_the_same_registration_again_changes_nothing(service: Service) -> None:
    await register(service, event_id="r-1")
    assert await register(service, event_id="r-1") == []  # redelivered: the inbox knows it
    utc = NOW.astimezone(UTC).isoformat()
    # A new event id, another user, the same instant with another offset: same content.
    assert await register(service, event_id="r-2", user_id="nurse-2", administered_at=utc) == []
    assert service.uow.repo.doses["v-1"].version == 1


@pytest.mark.parametrize(
    "change",
    [
        {"administered_at": (NOW - timedelta(hours=1)).isoformat()},
        {"vaccine": {"code": "J07BN01", "name": "Comirnaty", "dose_number": 4}},
        {"vaccine": {"code": "J07BB02", "name": "Influvac Tetra"}},
    ],
    ids=["time", "dose number", "vaccine"],
)
async def test_a_registration_with_other_content_replaces_the_record(
    service: Service, change: dict[str, Any]
) -> None:
    await add(service, **COVID)
    await register(service, event_id="r-1")
    [again] = await register(service, event_id="r-2", **change)
    assert again["data"]["version"] == 2 and again["data"]["command_id"] == "r-2"
    for name, value in change.items():
        expected = {"dose_number": None, **value} if name == "vaccine" else value
        assert again["data"][name] == expected


async def test_a_dose_entered_in_error_keeps_its_record_without_groups(service: Service) -> None:
    await add(service, **COVID)
    await register(service)
    [wrong] = await register(service, status="entered_in_error")
    data = wrong["data"]
    assert (data["status"], data["memberships"], data["missing_group"], data["version"]) == (
        "entered_in_error",
        [],
        False,
        2,
    )
    # A later change of the customer's groups does not bring the dose back.
    assert [e["type"] for e in await command(service, "add", **FLU)] == [messages.ADDED]
    [restored] = await register(service, status="completed")
    assert (restored["data"]["status"], groups(restored)) == (
        "completed",
        ["COVID_19", "INFLUENSA"],
    )


# -- refusals and dead letters ----------------------------------------------------------


async def test_a_registration_from_a_unit_off_the_list_is_refused_first(service: Service) -> None:
    before = len(service.uow.outbox.records)
    outcome = await service.send(
        TOPICS.registered,
        "vaccination.registered",
        registration(unit_id="unit-foreign", administered_at="not a time"),
        key=b"the-key",
    )
    assert outcome.processed == 1
    [refused] = sent(service, before)
    assert refused["key"] == b"the-key"
    assert (refused["data"]["reason_code"], refused["data"]["personnummer"]) == (
        "UNAUTHORIZED",
        None,
    )
    assert service.uow.repo.doses == {} and service.uow.repo.audit_rows == []


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"administered_at": "2026-11-26T10:00:00"}, "SCHEMA_VIOLATION"),  # no offset
        ({"administered_at": ...}, "SCHEMA_VIOLATION"),
        ({"vaccine": {"code": "J07BN01"}}, "SCHEMA_VIOLATION"),
        ({"status": "cancelled"}, "SCHEMA_VIOLATION"),
        ({"personnummer": BAD_PNR}, "INVALID_PERSONNUMMER"),
    ],
)
async def test_a_malformed_registration_is_a_dead_letter(
    service: Service, changes: dict[str, Any], code: str
) -> None:
    outcome = await service.send(
        TOPICS.registered, "vaccination.registered", registration(**changes)
    )
    assert (outcome.processed, outcome.dead_lettered) == (0, 1)
    assert service.dead_letter_codes() == [code]
    assert service.uow.repo.doses == {} and service.uow.outbox.records == []


async def test_a_vaccination_id_known_for_another_customer_or_unit_is_refused(
    service: Service,
) -> None:
    await service.start("v-1")
    [answer] = await register(service, personnummer=OTHER_PNR)
    assert answer["key"] == OTHER_PNR.encode()
    assert answer["data"]["reason_code"] == "INVALID_COMMAND"
    [answer] = await register(service, unit_id="unit-2")
    assert answer["data"]["reason_code"] == "INVALID_COMMAND"
    await register(service, vaccination_id="v-2")
    [answer] = await register(service, vaccination_id="v-2", personnummer=OTHER_PNR)
    assert answer["data"]["reason_code"] == "INVALID_COMMAND"
    assert list(service.uow.repo.doses) == ["v-2"]
    # A start of a dose registered for someone else gets no prompt.
    before = len(service.uow.outbox.records)
    await service.start("v-2", personnummer=OTHER_PNR)
    [(topic, _key, value)] = service.uow.outbox.records[before:]
    assert topic == TOPICS.events
    assert json.loads(value or b"")["data"]["reason_code"] == "INVALID_COMMAND"


# -- re-confirmation after a membership change --------------------------------------------


async def test_an_add_covering_the_dose_day_confirms_the_dose_again(service: Service) -> None:
    given = (NOW - timedelta(days=7)).isoformat()
    [first] = await register(service, administered_at=given, event_id="r-1")
    assert first["data"]["missing_group"] is True
    added, again = await command(
        service, "add", **COVID, valid_from=(TODAY - timedelta(days=7)).isoformat()
    )
    assert added["type"] == messages.ADDED and again["type"] == messages.CONFIRMED
    assert again["id"] == event_id(messages.CONFIRMED, "v-1", "2")
    data = again["data"]
    assert (data["command_id"], data["actor"], data["version"]) == (None, None, 2)
    assert (data["basis"], data["missing_group"], groups(again)) == (
        "registration",
        False,
        ["COVID_19"],
    )
    assert data["administered_at"] == given and data["vaccine"] == first["data"]["vaccine"]
    assert again["key"] == PNR.encode()


async def test_changes_that_do_not_touch_the_dose_day_confirm_nothing(service: Service) -> None:
    covid = await add(service, **COVID, valid_from=(TODAY - timedelta(days=30)).isoformat())
    await register(service, administered_at=(NOW - timedelta(days=7)).isoformat())
    only = [messages.ADDED]
    assert [e["type"] for e in await command(service, "add", **FLU)] == only  # from today
    # Ended after the dose: it still applied on the dose's day.
    ended = await command(service, "remove", membership_id=covid)
    assert [e["type"] for e in ended] == [messages.REMOVED]
    assert service.uow.repo.doses["v-1"].version == 1


async def test_an_earlier_end_or_a_correction_confirms_the_dose_again(service: Service) -> None:
    flu = await add(service, **FLU, valid_from=(TODAY - timedelta(days=30)).isoformat())
    covid = await add(service, **COVID, valid_from=(TODAY - timedelta(days=30)).isoformat())
    await register(service, administered_at=(NOW - timedelta(days=7)).isoformat())
    corrected = await command(service, "update", membership_id=flu, reference_code="R-9")
    assert [e["type"] for e in corrected] == [messages.UPDATED, messages.CONFIRMED]
    assert corrected[1]["data"]["memberships"][0]["reference_code"] == "R-9"
    before_the_dose = (TODAY - timedelta(days=8)).isoformat()
    removed = await command(service, "remove", membership_id=covid, valid_to=before_the_dose)
    assert [e["type"] for e in removed] == [messages.REMOVED, messages.CONFIRMED]
    assert groups(removed[1]) == ["INFLUENSA"] and removed[1]["data"]["version"] == 3


async def test_a_popup_dose_is_confirmed_again_on_its_day_of_close(service: Service) -> None:
    await service.start("v-1")
    await close(service)
    _, again = await command(service, "add", **COVID)
    assert again["data"]["basis"] == "popup" and groups(again) == ["COVID_19"]
    assert again["data"]["prompt_id"] == prompt_id_for("v-1")
    assert again["data"]["confirmed_at"] == NOW.isoformat()


async def test_a_customer_without_doses_gets_only_the_change(service: Service) -> None:
    [other] = await register(service, personnummer=OTHER_PNR)  # someone else's dose
    assert other["key"] == OTHER_PNR.encode()
    assert [e["type"] for e in await command(service, "add", **COVID)] == [messages.ADDED]
    assert service.uow.repo.doses["v-1"].version == 1


async def test_reconfirm_doses_needs_no_command(service: Service, catalog: Catalog) -> None:
    """What a retirement sweep does: end a membership, then re-decide the doses."""
    covid = await add(service, **COVID, valid_from=(TODAY - timedelta(days=30)).isoformat())
    await register(service, administered_at=(NOW - timedelta(days=3)).isoformat())
    customer: Customer = await service.uow.repo.get_customer(Personnummer.parse(PNR))
    ended: Membership = customer.get(covid)
    ended.valid_to, ended.version = TODAY - timedelta(days=5), ended.version + 1
    before = len(service.uow.outbox.records)
    deps = Dependencies(
        clock=FixedClock(NOW),
        catalog=CatalogHolder(catalog),
        authorization=Authorization(None),
        prompts_topic=TOPICS.prompts,
        events_topic=TOPICS.events,
    )
    later = NOW + timedelta(hours=1)
    await reconfirm_doses(service.uow, deps, Personnummer.parse(PNR), customer, later)
    [again] = sent(service, before)
    assert (again["data"]["command_id"], again["data"]["missing_group"]) == (None, True)
    assert again["time"] == later.isoformat()
    await reconfirm_doses(service.uow, deps, Personnummer.parse(PNR), customer, later)
    assert sent(service, before + 1) == [], "nothing changed since: nothing sent"
    assert service.uow.repo.doses["v-1"].status is DoseStatus.COMPLETED
    assert service.uow.repo.doses["v-1"].updated_at == later
    assert date.fromisoformat(again["data"]["administered_at"][:10]) == TODAY - timedelta(days=3)
