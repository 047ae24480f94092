from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import (
    ERRORS_BY_REASON,
    AlreadyActive,
    AlreadyHistorical,
    DomainError,
    GroupNotSelectable,
    InvalidCommand,
    InvalidPeriod,
    InvalidPersonnummer,
    MembershipNotFound,
    UnknownGroup,
    UnknownSubgroup,
)
from services.groups.domain.membership import (
    REFERENCE_CODE_MAX,
    UNCHANGED,
    Actor,
    Customer,
    Membership,
    MembershipStatus,
    RemovalReason,
)
from services.groups.domain.personnummer import Personnummer, luhn_check_digit
from tests.unit.groups.conftest import DATED, NOW, TODAY

PNR = Personnummer.parse("191212121212")
NURSE = Actor("nurse-1", "unit-1")
OTHER_NURSE = Actor("nurse-2", "unit-2")
ACTIVE, HISTORICAL = MembershipStatus.ACTIVE, MembershipStatus.HISTORICAL
IN_ERROR = MembershipStatus.ENTERED_IN_ERROR


def new_id() -> str:
    return str(uuid.uuid4())


def membership(**changes: Any) -> Membership:
    """A membership built directly (as a repository loads one)."""
    fields: dict[str, Any] = {
        "membership_id": new_id(),
        "group_code": "G",
        "subgroup_code": None,
        "reference_code": None,
        "valid_from": date(2020, 1, 1),
        "valid_to": None,
        "version": 1,
        "status": ACTIVE,
        "created_at": NOW,
        "created_by": NURSE,
        "updated_by": None,
    }
    return Membership(**{**fields, **changes})


@pytest.fixture
def customer() -> Customer:
    return Customer(PNR)


def add(
    customer: Customer,
    catalog: Catalog,
    group: str = "INFLUENSA",
    sub: str | None = "ALDER_65_PLUS",
    **kwargs: object,
) -> Membership:
    kwargs.setdefault("today", TODAY)
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("actor", NURSE)
    return customer.add_group(
        catalog,
        membership_id=new_id(),
        group_code=group,
        subgroup_code=sub,
        **kwargs,  # type: ignore[arg-type]
    )


def correct(customer: Customer, catalog: Catalog, m: Membership, **kwargs: Any) -> Membership:
    """Correct `m` as NURSE today; the entity after."""
    kwargs.setdefault("today", TODAY)
    kwargs.setdefault("actor", OTHER_NURSE)
    return customer.correct(catalog, membership_id=m.membership_id, **kwargs)[1]


def remove(customer: Customer, m: Membership, **kwargs: Any) -> Membership:
    kwargs.setdefault("today", TODAY)
    kwargs.setdefault("actor", OTHER_NURSE)
    return customer.remove(membership_id=m.membership_id, **kwargs)


# -- Membership ----------------------------------------------------------------


def test_status_is_stored_and_agrees_with_the_period() -> None:
    m = membership()
    assert m.status is ACTIVE and m.is_active
    assert not membership(valid_to=date(2020, 1, 1), status=HISTORICAL).is_active
    # entered in error keeps whatever period it had
    assert not membership(status=IN_ERROR).is_active
    assert membership(valid_to=date(2020, 2, 1), status=IN_ERROR).status is IN_ERROR
    assert [s.value for s in MembershipStatus] == ["active", "historical", "entered_in_error"]
    assert str(MembershipStatus.ACTIVE) == "active"


def test_membership_rejects_impossible_state() -> None:
    with pytest.raises(ValueError):
        membership(valid_from=date(2020, 1, 2), valid_to=date(2020, 1, 1), status=HISTORICAL)
    with pytest.raises(ValueError):
        membership(version=0)
    with pytest.raises(ValueError):
        membership(valid_to=date(2020, 1, 1))  # active with an end
    with pytest.raises(ValueError):
        membership(status=HISTORICAL)  # historical without an end
    with pytest.raises(ValueError):
        membership(created_at=datetime(2026, 11, 26, 10, 0))  # naive: not an instant


# -- Customer construction -----------------------------------------------------


def test_customer_repr_hides_the_personnummer(customer: Customer) -> None:
    assert "1212" not in repr(customer)


def test_customer_rejects_broken_history() -> None:
    one = membership()
    with pytest.raises(ValueError):
        Customer(PNR, [one, replace(one)])
    with pytest.raises(ValueError):
        Customer(PNR, [one, replace(one, membership_id=new_id())])
    ended = replace(one, membership_id=new_id(), valid_to=date(2020, 2, 1), status=HISTORICAL)
    in_error = replace(one, membership_id=new_id(), status=IN_ERROR)
    customer = Customer(PNR, [one, ended, in_error])  # entered in error does not block
    assert customer.active() == [one] and customer.historical() == [ended]


# -- add_group -----------------------------------------------------------------


def test_add_group(customer: Customer, catalog: Catalog) -> None:
    mid = new_id()
    m = customer.add_group(
        catalog,
        membership_id=mid,
        group_code="INFLUENSA",
        subgroup_code="ALDER_65_PLUS",
        reference_code="ABC-123",
        actor=NURSE,
        now=NOW,
        today=TODAY,
    )
    assert m == membership(
        membership_id=mid,
        group_code="INFLUENSA",
        subgroup_code="ALDER_65_PLUS",
        reference_code="ABC-123",
        valid_from=TODAY,
    )
    assert (m.status, m.created_at, m.created_by, m.updated_by) == (ACTIVE, NOW, NURSE, None)
    assert customer.get(mid) is m
    assert customer.active() == [m]
    assert customer.historical() == []


def test_what_the_service_adds_itself_has_no_creator(customer: Customer, catalog: Catalog) -> None:
    assert add(customer, catalog, actor=None).created_by is None


def test_the_guides_example_customer(customer: Customer, catalog: Catalog) -> None:
    """Several groups at once: Covid-19, Influensa and Övrigt, plus Pneumokock."""
    add(customer, catalog, "COVID_19", "REKOMMENDERAD")
    add(customer, catalog, "INFLUENSA", "ALDER_65_PLUS")
    add(customer, catalog, "OVRIGT", "RESEVACCINATIONER")
    add(customer, catalog, "PNEUMOKOCK", "ALDER_65_PLUS")
    assert [m.group_code for m in customer.active()] == [
        "COVID_19",
        "INFLUENSA",
        "OVRIGT",
        "PNEUMOKOCK",
    ]


def test_subgroup_is_optional(customer: Customer, catalog: Catalog) -> None:
    assert add(customer, catalog, "COVID_19", None).subgroup_code is None
    assert add(customer, catalog, "INFLUENSA", "").subgroup_code is None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        (" R1 ", "R1"),
        ("x" * REFERENCE_CODE_MAX, "x" * REFERENCE_CODE_MAX),
        ("Å-ref ö", "Å-ref ö"),
    ],
)
def test_reference_code_normalisation(
    customer: Customer, catalog: Catalog, given: str | None, stored: str | None
) -> None:
    assert add(customer, catalog, reference_code=given).reference_code == stored


@pytest.mark.parametrize("bad", ["x" * (REFERENCE_CODE_MAX + 1), "a\nb", "a\x00", 12])
def test_reference_code_rules(customer: Customer, catalog: Catalog, bad: object) -> None:
    with pytest.raises(InvalidCommand) as info:
        add(customer, catalog, reference_code=bad)
    assert str(bad) not in info.value.message
    assert customer.memberships == []


def test_back_dated_valid_from_for_after_registration(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2025, 10, 1))
    assert (m.valid_from, m.status) == (date(2025, 10, 1), ACTIVE)


def test_selectability_is_judged_on_valid_from_not_today(customer: Customer) -> None:
    # NEW applies from 2026-06-01: not before, even though it is selectable today
    with pytest.raises(GroupNotSelectable):
        add(customer, DATED, "NEW", None, valid_from=date(2026, 5, 31))
    assert add(customer, DATED, "NEW", None, valid_from=date(2026, 6, 1)).is_active
    # ENDED and OPEN/OLD are not selectable today, but were on an earlier day
    with pytest.raises(GroupNotSelectable):
        add(customer, DATED, "ENDED", None)
    with pytest.raises(GroupNotSelectable):
        add(customer, DATED, "OPEN", "OLD", valid_from=date(2026, 11, 1))
    assert customer.memberships[1:] == []


def test_after_registration_into_a_since_ended_group_is_stored_ended(customer: Customer) -> None:
    three_weeks_back = TODAY - timedelta(days=21)  # 2026-11-05, ENDED's last day
    m = add(customer, DATED, "ENDED", "S", valid_from=three_weeks_back)
    assert (m.valid_from, m.valid_to, m.status, m.version) == (
        three_weeks_back,
        date(2026, 11, 5),
        HISTORICAL,
        1,
    )
    assert customer.historical() == [m] and customer.active() == []
    # the subgroup's end counts as the group's: OPEN/OLD ended 2026-10-31
    old = add(customer, DATED, "OPEN", "OLD", valid_from=date(2026, 3, 1))
    assert (old.valid_to, old.status) == (date(2026, 10, 31), HISTORICAL)


def test_a_membership_ended_on_arrival_neither_blocks_nor_is_blocked(customer: Customer) -> None:
    active = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 1, 1))
    ended = add(customer, DATED, "OPEN", "OLD", valid_from=date(2026, 2, 1))
    assert ended.status is HISTORICAL, "an after-registration, not a second active OPEN"
    with pytest.raises(AlreadyActive):
        add(customer, DATED, "OPEN", "B")
    assert customer.active() == [active]


def test_a_group_ending_today_still_applies(customer: Customer) -> None:
    m = add(customer, DATED, "ENDED", None, valid_from=date(2026, 11, 1), today=date(2026, 11, 5))
    assert m.is_active, "the retirement sweep ends it once its last day has passed"


def test_future_valid_from_is_invalid_period(customer: Customer, catalog: Catalog) -> None:
    with pytest.raises(InvalidPeriod):
        add(customer, catalog, valid_from=TODAY + timedelta(days=1))
    assert add(customer, catalog, valid_from=TODAY).valid_from == TODAY


@pytest.mark.parametrize("coordination", [False, True])
def test_valid_from_before_the_birth_date_is_invalid_period(coordination: bool) -> None:
    day = 15 + (60 if coordination else 0)  # samordningsnummer: day + 60
    body = f"20100{3}{day:02d}123"
    customer = Customer(Personnummer.parse(body + luhn_check_digit(body[2:])))
    born = date(2010, 3, 15)
    with pytest.raises(InvalidPeriod) as info:
        add(customer, DATED, "OPEN", "A", valid_from=born - timedelta(days=1))
    assert "birth" in info.value.message and "2010-03-15" not in info.value.message
    assert add(customer, DATED, "OPEN", "A", valid_from=born).valid_from == born


def test_unknown_group_and_subgroup(customer: Customer, catalog: Catalog) -> None:
    with pytest.raises(UnknownGroup):
        add(customer, catalog, "NOPE", None)
    with pytest.raises(UnknownGroup):
        add(customer, catalog, "", None)
    with pytest.raises(UnknownSubgroup):
        add(customer, catalog, "INFLUENSA", "NOPE")
    with pytest.raises(UnknownSubgroup):
        add(customer, catalog, "COVID_19", "OVRIG_ALLMANHET_18_64")
    # existence before the period: a typo is named as such whatever the date
    with pytest.raises(UnknownGroup):
        add(customer, catalog, "NOPE", None, valid_from=TODAY + timedelta(days=1))
    assert customer.memberships == []


def test_the_retired_covid_group_is_an_after_registration_only(
    customer: Customer, catalog: Catalog
) -> None:
    with pytest.raises(GroupNotSelectable):
        add(customer, catalog, "COVID", "OVRIG_ALLMANHET_18_64")
    m = add(customer, catalog, "COVID", "OVRIG_ALLMANHET_18_64", valid_from=date(2023, 1, 1))
    assert (m.valid_to, m.status) == (date(2023, 9, 27), HISTORICAL)


def test_one_active_membership_per_group(customer: Customer, catalog: Catalog) -> None:
    first = add(customer, catalog, "INFLUENSA", "ALDER_65_PLUS")
    with pytest.raises(AlreadyActive):
        add(customer, catalog, "INFLUENSA", None)
    remove(customer, first)
    second = add(customer, catalog, "INFLUENSA", None)
    assert customer.active() == [second]
    assert customer.historical() == [first]


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "",
        "{12345678-1234-5678-1234-567812345678}",
        "12345678123456781234567812345678",
        str(uuid.uuid4()).upper(),
    ],
)
def test_membership_id_must_be_a_canonical_uuid(
    customer: Customer, catalog: Catalog, bad: str
) -> None:
    with pytest.raises(InvalidCommand):
        customer.add_group(
            catalog,
            membership_id=bad,
            group_code="INFLUENSA",
            subgroup_code=None,
            actor=NURSE,
            now=NOW,
            today=TODAY,
        )


def test_membership_id_must_be_new(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, "INFLUENSA")
    with pytest.raises(InvalidCommand):
        customer.add_group(
            catalog,
            membership_id=m.membership_id,
            group_code="COVID_19",
            actor=NURSE,
            now=NOW,
            today=TODAY,
        )


def test_a_clock_reading_is_a_bug(customer: Customer, catalog: Catalog) -> None:
    with pytest.raises(TypeError):
        add(customer, catalog, today=datetime(2026, 11, 26, 9, 0))
    with pytest.raises(TypeError):
        add(customer, catalog, valid_from=datetime(2026, 11, 26, 9, 0))
    with pytest.raises(TypeError):
        add(customer, catalog, now=datetime(2026, 11, 26, 9, 0))  # an instant needs a zone
    with pytest.raises(TypeError):
        add(customer, catalog, now=TODAY)


# -- correct -------------------------------------------------------------------


def test_correct_subgroup(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, "PNEUMOKOCK", "ALDER_65_PLUS", reference_code="R1")
    previous, current = customer.correct(
        catalog, membership_id=m.membership_id, subgroup_code=None, actor=OTHER_NURSE, today=TODAY
    )
    assert previous == membership(
        membership_id=m.membership_id,
        group_code="PNEUMOKOCK",
        subgroup_code="ALDER_65_PLUS",
        reference_code="R1",
        valid_from=TODAY,
    )
    assert current is customer.get(m.membership_id)
    assert (current.subgroup_code, current.reference_code, current.version) == (None, "R1", 2)
    assert (current.created_by, current.updated_by) == (NURSE, OTHER_NURSE)
    correct(customer, catalog, m, reference_code="R2")
    assert previous.version == 1 and previous.reference_code == "R1"  # snapshots are detached
    assert previous.updated_by is None


def test_correct_reference_code_only_and_clear(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", reference_code="R1")
    current = correct(customer, DATED, m, reference_code=" R9 ")
    assert (current.subgroup_code, current.reference_code) == ("A", "R9")
    assert correct(customer, DATED, m, reference_code=None).reference_code is None
    assert correct(customer, DATED, m, subgroup_code=None).subgroup_code is None
    current = correct(customer, DATED, m, subgroup_code="B", reference_code="")
    assert (current.subgroup_code, current.reference_code, current.version) == ("B", None, 5)


def test_correction_that_changes_nothing_still_bumps_the_version(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", reference_code="R1")
    previous, current = customer.correct(
        DATED,
        membership_id=m.membership_id,
        group_code="OPEN",
        subgroup_code="A",
        reference_code="R1",
        actor=NURSE,
        today=TODAY,
    )
    assert replace(previous, version=2, updated_by=NURSE) == current


def test_correct_needs_a_field(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog)
    with pytest.raises(InvalidCommand):
        customer.correct(catalog, membership_id=m.membership_id, actor=NURSE, today=TODAY)
    with pytest.raises(InvalidCommand):
        customer.correct(
            catalog,
            membership_id=m.membership_id,
            group_code=UNCHANGED,
            subgroup_code=UNCHANGED,
            reference_code=UNCHANGED,
            actor=NURSE,
            today=TODAY,
        )
    assert m.version == 1


def test_correct_errors(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog)
    with pytest.raises(MembershipNotFound):
        customer.correct(
            catalog, membership_id=new_id(), reference_code="x", actor=NURSE, today=TODAY
        )
    with pytest.raises(UnknownSubgroup):
        correct(customer, catalog, m, subgroup_code="REKOMMENDERAD")
    with pytest.raises(InvalidCommand):
        correct(customer, catalog, m, reference_code="x" * 65)
    with pytest.raises(InvalidCommand):
        correct(customer, catalog, m, group_code=None)  # the group cannot be cleared
    with pytest.raises(UnknownGroup):
        correct(customer, catalog, m, group_code="NOPE")
    assert m.version == 1 and m.subgroup_code == "ALDER_65_PLUS" and m.updated_by is None


def test_correct_the_group(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", reference_code="R1", valid_from=date(2026, 7, 1))
    previous, current = customer.correct(
        DATED, membership_id=m.membership_id, group_code="NEW", actor=OTHER_NURSE, today=TODAY
    )
    assert (previous.group_code, previous.subgroup_code) == ("OPEN", "A")
    assert (current.group_code, current.subgroup_code, current.reference_code) == (
        "NEW",
        None,  # a new group without a subgroup clears it
        "R1",  # absent: unchanged
    )
    assert (current.membership_id, current.version, current.status) == (m.membership_id, 2, ACTIVE)
    assert current.valid_from == date(2026, 7, 1) and current.created_by == NURSE
    back = correct(customer, DATED, m, group_code="OPEN", subgroup_code="B")
    assert (back.group_code, back.subgroup_code, back.version) == ("OPEN", "B", 3)
    # the same group again is no new group: its subgroup stays
    assert correct(customer, DATED, m, group_code="OPEN").subgroup_code == "B"


def test_a_new_group_must_be_selectable_on_the_memberships_valid_from(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 3, 1))
    with pytest.raises(GroupNotSelectable):
        correct(customer, DATED, m, group_code="NEW")  # NEW starts 2026-06-01
    with pytest.raises(UnknownSubgroup):
        correct(customer, DATED, m, group_code="NEW", subgroup_code="A")
    assert (m.group_code, m.subgroup_code, m.version) == ("OPEN", "A", 1)


def test_a_new_group_may_not_be_active_twice(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A")
    other = add(customer, DATED, "OTHER", None)
    with pytest.raises(AlreadyActive):
        correct(customer, DATED, m, group_code="OTHER")
    remove(customer, other)
    assert correct(customer, DATED, m, group_code="OTHER").group_code == "OTHER"


def test_a_historical_membership_can_be_corrected(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 2, 1))
    remove(customer, m, valid_to=date(2026, 3, 31))
    add(customer, DATED, "OTHER", None)  # an active OTHER does not block a historical one
    current = correct(customer, DATED, m, group_code="OTHER", reference_code="R")
    assert (current.group_code, current.reference_code, current.status, current.valid_to) == (
        "OTHER",
        "R",
        HISTORICAL,
        date(2026, 3, 31),
    )


def test_a_correction_into_a_since_ended_group_ends_an_active_membership(
    customer: Customer,
) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 10, 1))
    current = correct(customer, DATED, m, group_code="ENDED")
    assert (current.status, current.valid_to, current.version) == (
        HISTORICAL,
        date(2026, 11, 5),
        2,
    )
    n = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 10, 1))
    assert correct(customer, DATED, n, subgroup_code="OLD").valid_to == date(2026, 10, 31)


def test_a_correction_into_an_ended_group_moves_a_later_end_back(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 10, 1))
    remove(customer, m, valid_to=date(2026, 11, 20))
    assert correct(customer, DATED, m, group_code="ENDED").valid_to == date(2026, 11, 5)
    k = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 10, 1))
    remove(customer, k, valid_to=date(2026, 10, 3))
    assert correct(customer, DATED, k, group_code="ENDED").valid_to == date(2026, 10, 3)


def test_an_entered_in_error_membership_cannot_be_corrected(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A")
    remove(customer, m, reason=RemovalReason.ENTERED_IN_ERROR)
    with pytest.raises(InvalidCommand) as info:
        correct(customer, DATED, m, reference_code="R")
    assert "entered in error" in info.value.message
    assert m.version == 2


def test_correct_to_a_retired_subgroup_is_not_selectable(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A")
    with pytest.raises(GroupNotSelectable):
        correct(customer, DATED, m, subgroup_code="OLD")


def test_resending_a_retired_current_subgroup_is_accepted(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "OLD", valid_from=date(2026, 6, 1), today=date(2026, 10, 1))
    current = correct(customer, DATED, m, subgroup_code="OLD", reference_code="fix")
    assert current.reference_code == "fix"
    assert current.is_active, "a reference fix leaves the period to the retirement sweep"
    assert correct(customer, DATED, m, group_code="OPEN", reference_code="x").is_active


# -- remove --------------------------------------------------------------------


def test_remove_defaults_to_today(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2026, 1, 1))
    removed = customer.remove(membership_id=m.membership_id, actor=OTHER_NURSE, today=TODAY)
    assert removed is m
    assert (m.valid_to, m.version, m.status) == (TODAY, 2, HISTORICAL)
    assert (m.created_by, m.updated_by) == (NURSE, OTHER_NURSE)
    assert customer.get(m.membership_id) is m  # never deleted
    assert customer.historical() == [m] and customer.active() == []


def test_remove_with_a_back_dated_end(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2026, 1, 1))
    remove(customer, m, valid_to=date(2026, 1, 1))
    assert m.valid_to == date(2026, 1, 1)


def test_remove_errors(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2026, 1, 1))
    with pytest.raises(MembershipNotFound):
        customer.remove(membership_id=new_id(), actor=NURSE, today=TODAY)
    with pytest.raises(InvalidPeriod):
        remove(customer, m, valid_to=date(2025, 12, 31))
    with pytest.raises(InvalidPeriod):
        remove(customer, m, valid_to=TODAY + timedelta(days=1))
    assert m.is_active and m.version == 1
    remove(customer, m)
    with pytest.raises(AlreadyHistorical):
        remove(customer, m)
    assert m.version == 2


@pytest.mark.parametrize("ended_first", [False, True])
def test_entered_in_error_keeps_the_period_and_leaves_both_lists(
    customer: Customer, ended_first: bool
) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 1, 1))
    if ended_first:
        remove(customer, m, valid_to=date(2026, 2, 1))
    period = (m.valid_from, m.valid_to)
    removed = remove(customer, m, reason=RemovalReason.ENTERED_IN_ERROR, actor=NURSE)
    assert removed is m and m.status is IN_ERROR
    assert (m.valid_from, m.valid_to) == period, "periods unchanged"
    assert (m.version, m.updated_by) == (3 if ended_first else 2, NURSE)
    assert customer.active() == [] and customer.historical() == []
    assert customer.get(m.membership_id) is m  # never deleted
    # the group is free again
    assert add(customer, DATED, "OPEN", "B").is_active


def test_entered_in_error_rules(customer: Customer) -> None:
    m = add(customer, DATED, "OPEN", "A", valid_from=date(2026, 1, 1))
    with pytest.raises(InvalidCommand):  # the period is kept, so no end may be given
        remove(customer, m, reason=RemovalReason.ENTERED_IN_ERROR, valid_to=TODAY)
    remove(customer, m, reason=RemovalReason.ENTERED_IN_ERROR)
    with pytest.raises(AlreadyHistorical):
        remove(customer, m, reason=RemovalReason.ENTERED_IN_ERROR)
    with pytest.raises(AlreadyHistorical):
        remove(customer, m)  # ended
    assert m.version == 2


def test_get_unknown(customer: Customer) -> None:
    with pytest.raises(MembershipNotFound):
        customer.get("nope")


# -- every reason code ---------------------------------------------------------

SERVICE_LAYER_ONLY = {"PROMPT_NOT_FOUND", "UNAUTHORIZED"}


def _scenarios(catalog: Catalog) -> dict[str, Callable[[], object]]:
    c = Customer(PNR)
    active = add(c, catalog, "INFLUENSA", "ALDER_65_PLUS", valid_from=date(2026, 1, 1))
    ended = add(c, catalog, "PNEUMOKOCK", None)
    remove(c, ended)
    return {
        "INVALID_PERSONNUMMER": lambda: Customer(Personnummer.parse("191212121213")),
        "INVALID_COMMAND": lambda: add(c, catalog, "COVID_19", None, reference_code="x" * 65),
        "UNKNOWN_GROUP": lambda: add(c, catalog, "NOPE", None),
        "UNKNOWN_SUBGROUP": lambda: add(c, catalog, "COVID_19", "NOPE"),
        "GROUP_NOT_SELECTABLE": lambda: add(c, catalog, "COVID", None),
        "ALREADY_ACTIVE": lambda: add(c, catalog, "INFLUENSA", None),
        "MEMBERSHIP_NOT_FOUND": lambda: remove(c, membership()),
        "ALREADY_HISTORICAL": lambda: remove(c, ended),
        "INVALID_PERIOD": lambda: remove(c, active, valid_to=date(2025, 1, 1)),
    }


def test_every_domain_reason_code_is_reachable(catalog: Catalog) -> None:
    scenarios = _scenarios(catalog)
    assert set(scenarios) | SERVICE_LAYER_ONLY == set(ERRORS_BY_REASON)
    for code, run in scenarios.items():
        with pytest.raises(DomainError) as info:
            run()
        assert info.value.reason_code == code
        assert type(info.value) is ERRORS_BY_REASON[code]
        assert "191212121212" not in info.value.message and "1212121212" not in info.value.message


def test_invalid_personnummer_is_a_domain_error() -> None:
    assert issubclass(InvalidPersonnummer, DomainError)


def test_created_at_is_an_instant_kept_as_given(customer: Customer, catalog: Catalog) -> None:
    utc = NOW.astimezone(UTC)
    assert add(customer, catalog, now=utc).created_at == NOW
