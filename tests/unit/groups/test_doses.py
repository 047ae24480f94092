"""The dose rule (pure): the day of a dose in Europe/Stockholm and the memberships that
cover it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.groups.domain.doses import (
    Basis,
    Dose,
    DoseStatus,
    Registration,
    Vaccine,
    covering,
    covers,
    day_of,
    same_groups,
)
from services.groups.domain.membership import Actor, Membership, MembershipStatus

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def membership(valid_from: date, valid_to: date | None = None, **changes: Any) -> Membership:
    values: dict[str, Any] = {
        "membership_id": "m-1",
        "group_code": "COVID_19",
        "subgroup_code": "REKOMMENDERAD",
        "reference_code": None,
        "valid_from": valid_from,
        "valid_to": valid_to,
        "version": 1,
        "status": MembershipStatus.ACTIVE if valid_to is None else MembershipStatus.HISTORICAL,
        "created_at": datetime(2026, 1, 1, tzinfo=STOCKHOLM),
        "created_by": None,
        "updated_by": None,
    }
    return Membership(**{**values, **changes})


def dose(administered_at: datetime | None, confirmed_at: datetime | None = None) -> Dose:
    return Dose(
        vaccination_id="v-1",
        personnummer="191212121212",
        unit_id="unit-1",
        basis=Basis.REGISTRATION if administered_at else Basis.POPUP,
        status=DoseStatus.COMPLETED,
        prompt_id=None,
        confirmed_at=confirmed_at,
        administered_at=administered_at,
        vaccine=Vaccine("J07BN01", "Comirnaty", 1) if administered_at else None,
        actor=Actor("nurse-1", "unit-1"),
        memberships=(),
        version=1,
        command_id="c-1",
        updated_at=datetime(2026, 11, 26, 12, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("instant", "day"),
    [
        # Just after midnight in Stockholm (CET, +01:00) is still the previous day in UTC.
        (datetime(2026, 11, 25, 23, 5, tzinfo=UTC), date(2026, 11, 26)),
        (datetime(2026, 11, 25, 22, 59, tzinfo=UTC), date(2026, 11, 25)),
        # Summer time (CEST, +02:00).
        (datetime(2026, 6, 30, 22, 30, tzinfo=UTC), date(2026, 7, 1)),
        (datetime(2026, 6, 30, 21, 59, tzinfo=UTC), date(2026, 6, 30)),
        # Any offset names the same instant.
        (datetime(2026, 11, 26, 0, 30, tzinfo=timezone(timedelta(hours=1))), date(2026, 11, 26)),
        (datetime(2026, 11, 25, 18, 30, tzinfo=timezone(timedelta(hours=-5))), date(2026, 11, 26)),
    ],
)
def test_the_day_of_a_dose_is_its_day_in_stockholm(instant: datetime, day: date) -> None:
    assert day_of(instant, STOCKHOLM) == day


def test_an_instant_without_offset_has_no_day() -> None:
    with pytest.raises(ValueError, match="offset"):
        day_of(datetime(2026, 11, 26, 12), STOCKHOLM)


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "covered"),
    [
        (date(2026, 11, 26), None, True),  # starts on the day, open end
        (date(2026, 1, 1), date(2026, 11, 26), True),  # ends on the day (inclusive)
        (date(2026, 1, 1), date(2026, 11, 25), False),  # ended the day before
        (date(2026, 11, 27), None, False),  # starts the day after
        (date(2026, 11, 26), date(2026, 11, 26), True),  # one day: that day
    ],
)
def test_a_membership_covers_the_days_of_its_inclusive_period(
    valid_from: date, valid_to: date | None, covered: bool
) -> None:
    assert covers(membership(valid_from, valid_to), date(2026, 11, 26)) is covered


def test_a_membership_entered_in_error_covers_no_day() -> None:
    wrong = membership(date(2026, 1, 1), status=MembershipStatus.ENTERED_IN_ERROR)
    assert covers(wrong, date(2026, 11, 26)) is False
    assert covers(membership(date(2026, 1, 1)), date(2026, 11, 26)) is True


def test_a_dose_just_after_midnight_takes_the_groups_of_its_local_day() -> None:
    ended_the_day_before = membership(date(2026, 1, 1), date(2026, 11, 25), membership_id="m-old")
    started_that_day = membership(date(2026, 11, 26), membership_id="m-new")
    given = dose(datetime(2026, 11, 25, 23, 5, tzinfo=UTC))  # 00:05 on the 26th in Stockholm
    found = covering([ended_the_day_before, started_that_day], given, STOCKHOLM)
    assert [m.membership_id for m in found] == ["m-new"]


def test_the_registration_decides_the_day_once_known() -> None:
    closed = datetime(2026, 11, 26, 10, tzinfo=STOCKHOLM)
    popup = dose(None, confirmed_at=closed)
    assert popup.day(STOCKHOLM) == date(2026, 11, 26)
    three_weeks_back = datetime(2026, 11, 5, 9, tzinfo=STOCKHOLM)
    registration = Registration(
        "unit-1", three_weeks_back, Vaccine("J07BN01", "Comirnaty"), DoseStatus.COMPLETED
    )
    registered = popup.registered(registration)
    assert registered.basis is Basis.REGISTRATION and registered.confirmed_at == closed
    assert registered.day(STOCKHOLM) == date(2026, 11, 5)
    assert registered.registration() == registration and popup.registration() is None


def test_the_same_registration_is_the_same_content_whatever_the_offset() -> None:
    vaccine = Vaccine("J07BN01", "Comirnaty", 2)
    at = datetime(2026, 11, 26, 9, tzinfo=UTC)
    first = Registration("unit-1", at, vaccine, DoseStatus.COMPLETED)
    assert first == Registration("unit-1", at.astimezone(STOCKHOLM), vaccine, DoseStatus.COMPLETED)
    assert first != replace(first, administered_at=at + timedelta(minutes=1))
    assert first != replace(first, vaccine=Vaccine("J07BN01", "Comirnaty", 3))
    assert first != replace(first, status=DoseStatus.ENTERED_IN_ERROR)


def test_a_dose_entered_in_error_has_no_groups_and_misses_none() -> None:
    given = dose(datetime(2026, 11, 26, 9, tzinfo=UTC))
    wrong = replace(given, status=DoseStatus.ENTERED_IN_ERROR)
    assert covering([membership(date(2026, 1, 1))], wrong, STOCKHOLM) == []
    assert wrong.missing_group is False
    assert given.missing_group is True  # given, and no group recorded
    view = {"membership_id": "m-1", "group_code": "COVID_19"}
    assert replace(given, memberships=(view,)).missing_group is False


def test_same_groups_compares_memberships_and_codes_not_order_or_period() -> None:
    a = {"membership_id": "m-1", "group_code": "COVID_19", "subgroup_code": None}
    b = {"membership_id": "m-2", "group_code": "INFLUENSA", "subgroup_code": "RISKGRUPP"}
    assert same_groups([a, b], [b, a])
    assert same_groups([a], [{**a, "valid_to": "2026-12-01", "version": 2}])
    assert not same_groups([a], [a, b])
    assert not same_groups([b], [{**b, "subgroup_code": "ALDER_65_PLUS"}])
    assert not same_groups([b], [{**b, "reference_code": "R-1"}])
    assert not same_groups([a], [{**a, "subgroup_code": "None"}])
