"""The retirement sweep: memberships in a group or subgroup the catalog has ended end on
its last day once that day has passed, once, told as `removed` with `group_retired`."""

from __future__ import annotations

import json
import uuid
from datetime import date, timedelta
from typing import Any

import pytest

from services.common.settings import TopicSettings
from services.groups.domain.authorization import Authorization
from services.groups.domain.catalog import Catalog, Group, Subgroup
from services.groups.domain.membership import Actor, Customer, Membership, MembershipStatus
from services.groups.domain.personnummer import Personnummer, luhn_check_digit
from services.groups.service_layer import messages
from services.groups.service_layer.context import CatalogHolder, Dependencies
from services.groups.service_layer.retirement import ended_codes, retire_ended_memberships
from tests.unit.groups.conftest import NOW, TODAY
from tests.unit.groups.fakes import FakeUnitOfWork, FixedClock

TOPICS = TopicSettings()
NURSE = Actor("nurse-1", "unit-1")
YESTERDAY = TODAY - timedelta(days=1)


def catalog(*, group_end: date | None = None, sub_end: date | None = None) -> Catalog:
    return Catalog(
        "2",
        (
            Group(
                "G",
                "G",
                date(2020, 1, 1),
                group_end,
                subgroups=(
                    Subgroup("A", "A", date(2020, 1, 1), sub_end),
                    Subgroup("B", "B", date(2020, 1, 1)),
                ),
            ),
            Group("H", "H", date(2020, 1, 1)),
        ),
    )


def pnr(n: int) -> str:
    body = f"19800101{n:03d}"
    return body + luhn_check_digit(body[2:])[-1]


def customer_with(
    open_catalog: Catalog, *groups: tuple[str, str | None], valid_from: date = date(2026, 1, 1)
) -> Customer:
    customer = Customer(Personnummer.parse(pnr(1)))
    for group_code, subgroup_code in groups:
        customer.add_group(
            open_catalog,
            membership_id=str(uuid.uuid4()),
            group_code=group_code,
            subgroup_code=subgroup_code,
            valid_from=valid_from,
            actor=NURSE,
            now=NOW,
            today=TODAY,
        )
    return customer


# -- the domain rule -----------------------------------------------------------------


def test_memberships_end_on_the_last_day_of_their_group_or_subgroup() -> None:
    customer = customer_with(catalog(), ("G", "A"), ("H", None))
    in_a, in_h = customer.memberships
    other = customer_with(catalog(), ("G", None))
    subgroup_ended = catalog(sub_end=YESTERDAY)
    assert customer.retire(subgroup_ended, today=TODAY) == [in_a]
    assert (in_a.valid_to, in_a.status, in_a.version) == (YESTERDAY, "historical", 2)
    assert in_a.updated_by is None and in_a.created_by == NURSE
    assert in_h.is_active
    assert other.retire(subgroup_ended, today=TODAY) == []  # no subgroup: the group is open
    group_ended = catalog(group_end=date(2026, 3, 1))
    [ended] = other.retire(group_ended, today=TODAY)
    assert ended.valid_to == date(2026, 3, 1)


def test_nothing_ends_before_its_last_day_has_passed_or_before_it_began() -> None:
    customer = customer_with(catalog(), ("G", None))
    assert customer.retire(catalog(group_end=TODAY), today=TODAY) == []  # still applies today
    late = customer_with(catalog(), ("G", None), valid_from=date(2026, 5, 1))
    [ended] = late.retire(catalog(group_end=date(2026, 4, 1)), today=TODAY)
    assert ended.valid_to == date(2026, 5, 1)  # never before its own valid_from


def test_a_second_sweep_finds_nothing() -> None:
    customer = customer_with(catalog(), ("G", "A"))
    ended_catalog = catalog(group_end=YESTERDAY)
    assert len(customer.retire(ended_catalog, today=TODAY)) == 1
    assert customer.retire(ended_catalog, today=TODAY) == []


def test_ended_codes() -> None:
    assert ended_codes(catalog(group_end=YESTERDAY, sub_end=YESTERDAY), TODAY) == (["G"], [])
    assert ended_codes(catalog(sub_end=YESTERDAY), TODAY) == ([], [("G", "A")])
    assert ended_codes(catalog(sub_end=TODAY), TODAY) == ([], [])


# -- the sweep over a unit of work ---------------------------------------------------


async def _stored(
    uow: FakeUnitOfWork, n: int, group: tuple[str, str | None], membership_id: str | None = None
) -> Membership:
    personnummer = Personnummer.parse(pnr(n))
    customer = await uow.repo.get_customer(personnummer)
    membership = customer.add_group(
        catalog(),
        membership_id=membership_id or str(uuid.uuid4()),
        group_code=group[0],
        subgroup_code=group[1],
        valid_from=date(2026, 1, 1),
        actor=NURSE,
        now=NOW,
        today=TODAY,
    )
    await uow.repo.insert_membership(personnummer, membership, now=NOW)
    return membership


def _deps(current: Catalog) -> Dependencies:
    return Dependencies(
        clock=FixedClock(NOW),
        catalog=CatalogHolder(current),
        authorization=Authorization(frozenset({"unit-1"})),
        prompts_topic=TOPICS.prompts,
        events_topic=TOPICS.events,
    )


def _events(uow: FakeUnitOfWork) -> list[dict[str, Any]]:
    return [json.loads(value or b"") for _, _, value in uow.outbox.records]


@pytest.mark.parametrize("batch_size", [1, 2, 100])
async def test_the_sweep_ends_each_membership_once_and_tells_of_it(batch_size: int) -> None:
    uow = FakeUnitOfWork()
    retired = [await _stored(uow, n, ("G", "A")) for n in range(5)]
    kept = await _stored(uow, 9, ("G", "B"))
    deps = _deps(catalog(sub_end=YESTERDAY))

    assert await retire_ended_memberships(lambda: uow, deps, batch_size=batch_size) == 5
    events = _events(uow)
    assert [e["type"] for e in events] == [messages.REMOVED] * 5
    assert {e["data"]["membership"]["membership_id"] for e in events} == {
        m.membership_id for m in retired
    }
    for event in events:
        data = event["data"]
        assert (data["reason"], data["actor"], data["command_id"]) == ("group_retired", None, None)
        assert data["membership"]["valid_to"] == YESTERDAY.isoformat()
        assert data["membership"]["status"] == "historical"
        assert data["membership"]["updated_by"] is None
    assert uow.repo.memberships[kept.membership_id][1].status is MembershipStatus.ACTIVE
    # Each customer changed under its lock, as the inbound pipeline takes it.
    assert sorted(p for batch in uow.locked for p in batch) == sorted(pnr(n) for n in range(5))
    audit = [row for row in uow.repo.audit_rows if row["detail"].get("reason")]
    assert len(audit) == 5 and {row["user_id"] for row in audit} == {"customer-groups-service"}

    # Again (another process, the next hour): nothing left to end, nothing told.
    assert await retire_ended_memberships(lambda: uow, deps, batch_size=batch_size) == 0
    assert len(uow.outbox.records) == 5


async def test_the_same_retirement_has_the_same_event_id() -> None:
    """A sweep retried after a failed commit produces the very same event."""
    ids = []
    for _ in range(2):
        uow = FakeUnitOfWork()
        await _stored(uow, 1, ("G", None), membership_id="7d4f7c0e-9a53-4a66-8d0b-0d6a9b6c1f11")
        await retire_ended_memberships(lambda u=uow: u, _deps(catalog(group_end=YESTERDAY)))
        ids.append(_events(uow)[0]["id"])
    assert ids[0] == ids[1]
