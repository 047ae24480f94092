from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest

from services.groups.domain.catalog import Catalog, Group, Subgroup
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
    Customer,
    Membership,
    MembershipStatus,
)
from services.groups.domain.personnummer import Personnummer
from tests.unit.groups.conftest import TODAY

PNR = Personnummer.parse("191212121212")


def new_id() -> str:
    return str(uuid.uuid4())


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
    return customer.add_group(
        catalog,
        membership_id=new_id(),
        group_code=group,
        subgroup_code=sub,
        **kwargs,  # type: ignore[arg-type]
    )


# -- Membership ----------------------------------------------------------------


def test_status_is_derived_from_valid_to() -> None:
    m = Membership(new_id(), "G", None, None, date(2020, 1, 1), None, 1)
    assert m.status is MembershipStatus.ACTIVE and m.is_active
    ended = replace(m, valid_to=date(2020, 1, 1))
    assert ended.status is MembershipStatus.HISTORICAL and not ended.is_active
    assert [s.value for s in MembershipStatus] == ["active", "historical"]
    assert str(MembershipStatus.ACTIVE) == "active"


def test_membership_rejects_impossible_state() -> None:
    with pytest.raises(ValueError):
        Membership(new_id(), "G", None, None, date(2020, 1, 2), date(2020, 1, 1), 1)
    with pytest.raises(ValueError):
        Membership(new_id(), "G", None, None, date(2020, 1, 1), None, 0)


# -- Customer construction -----------------------------------------------------


def test_customer_repr_hides_the_personnummer(customer: Customer) -> None:
    assert "1212" not in repr(customer)


def test_customer_rejects_broken_history() -> None:
    one = Membership(new_id(), "G", None, None, date(2020, 1, 1), None, 1)
    with pytest.raises(ValueError):
        Customer(PNR, [one, replace(one)])
    with pytest.raises(ValueError):
        Customer(PNR, [one, replace(one, membership_id=new_id())])
    ended = replace(one, membership_id=new_id(), valid_to=date(2020, 2, 1))
    assert Customer(PNR, [one, ended]).historical() == [ended]


# -- add_group -----------------------------------------------------------------


def test_add_group(customer: Customer, catalog: Catalog) -> None:
    mid = new_id()
    m = customer.add_group(
        catalog,
        membership_id=mid,
        group_code="INFLUENSA",
        subgroup_code="ALDER_65_PLUS",
        reference_code="ABC-123",
        today=TODAY,
    )
    assert m == Membership(mid, "INFLUENSA", "ALDER_65_PLUS", "ABC-123", TODAY, None, 1)
    assert m.status is MembershipStatus.ACTIVE
    assert customer.get(mid) is m
    assert customer.active() == [m]
    assert customer.historical() == []


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


def test_back_dated_valid_from_for_after_registration(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2025, 10, 1))
    assert m.valid_from == date(2025, 10, 1)
    # even before the group's own valid_from: selectability is judged on today
    assert add(customer, catalog, "COVID_19", None, valid_from=date(2021, 1, 1)).valid_from == date(
        2021, 1, 1
    )


def test_future_valid_from_is_invalid_period(customer: Customer, catalog: Catalog) -> None:
    with pytest.raises(InvalidPeriod):
        add(customer, catalog, valid_from=TODAY + timedelta(days=1))
    assert add(customer, catalog, valid_from=TODAY).valid_from == TODAY


def test_unknown_group_and_subgroup(customer: Customer, catalog: Catalog) -> None:
    with pytest.raises(UnknownGroup):
        add(customer, catalog, "NOPE", None)
    with pytest.raises(UnknownGroup):
        add(customer, catalog, "", None)
    with pytest.raises(UnknownSubgroup):
        add(customer, catalog, "INFLUENSA", "NOPE")
    with pytest.raises(UnknownSubgroup):
        add(customer, catalog, "COVID_19", "OVRIG_ALLMANHET_18_64")
    assert customer.memberships == []


def test_retired_groups_are_judged_on_today_not_valid_from(
    customer: Customer, catalog: Catalog
) -> None:
    with pytest.raises(GroupNotSelectable):
        add(customer, catalog, "COVID", "OVRIG_ALLMANHET_18_64", valid_from=date(2023, 1, 1))
    with pytest.raises(GroupNotSelectable):
        add(customer, catalog, "HAR_HEMSJUKVARD_HEMTJANST", None)
    m = add(customer, catalog, "COVID", "OVRIG_ALLMANHET_18_64", today=date(2023, 9, 27))
    assert m.valid_from == date(2023, 9, 27)


def test_one_active_membership_per_group(customer: Customer, catalog: Catalog) -> None:
    first = add(customer, catalog, "INFLUENSA", "ALDER_65_PLUS")
    with pytest.raises(AlreadyActive):
        add(customer, catalog, "INFLUENSA", "ALDER_65_PLUS")
    with pytest.raises(AlreadyActive):
        add(customer, catalog, "INFLUENSA", None)
    customer.remove(membership_id=first.membership_id, today=TODAY)
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
            catalog, membership_id=bad, group_code="INFLUENSA", subgroup_code=None, today=TODAY
        )


def test_membership_id_must_be_new(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, "INFLUENSA")
    with pytest.raises(InvalidCommand):
        customer.add_group(
            catalog, membership_id=m.membership_id, group_code="COVID_19", today=TODAY
        )


def test_a_clock_reading_is_a_bug(customer: Customer, catalog: Catalog) -> None:
    with pytest.raises(TypeError):
        add(customer, catalog, today=datetime(2026, 11, 26, 9, 0))
    with pytest.raises(TypeError):
        add(customer, catalog, valid_from=datetime(2026, 11, 26, 9, 0))


# -- correct -------------------------------------------------------------------


def test_correct_subgroup(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, "INFLUENSA", None, reference_code="R1")
    previous, current = customer.correct(
        catalog, membership_id=m.membership_id, subgroup_code="ALDER_65_PLUS", today=TODAY
    )
    assert previous == Membership(m.membership_id, "INFLUENSA", None, "R1", TODAY, None, 1)
    assert current is customer.get(m.membership_id)
    assert (current.subgroup_code, current.reference_code, current.version) == (
        "ALDER_65_PLUS",
        "R1",
        2,
    )
    customer.correct(catalog, membership_id=m.membership_id, reference_code="R2", today=TODAY)
    assert previous.version == 1 and previous.reference_code == "R1"  # snapshots are detached


def test_correct_reference_code_only_and_clear(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, reference_code="R1")
    _, current = customer.correct(
        catalog, membership_id=m.membership_id, reference_code=" R9 ", today=TODAY
    )
    assert (current.subgroup_code, current.reference_code) == ("ALDER_65_PLUS", "R9")
    _, current = customer.correct(
        catalog, membership_id=m.membership_id, reference_code=None, today=TODAY
    )
    assert current.reference_code is None
    _, current = customer.correct(
        catalog, membership_id=m.membership_id, subgroup_code=None, today=TODAY
    )
    assert current.subgroup_code is None
    _, current = customer.correct(
        catalog,
        membership_id=m.membership_id,
        subgroup_code="ALDER_65_PLUS",
        reference_code="",
        today=TODAY,
    )
    assert (current.subgroup_code, current.reference_code, current.version) == (
        "ALDER_65_PLUS",
        None,
        5,
    )


def test_correction_that_changes_nothing_still_bumps_the_version(
    customer: Customer, catalog: Catalog
) -> None:
    m = add(customer, catalog, reference_code="R1")
    previous, current = customer.correct(
        catalog,
        membership_id=m.membership_id,
        subgroup_code="ALDER_65_PLUS",
        reference_code="R1",
        today=TODAY,
    )
    assert replace(previous, version=2) == current


def test_correct_needs_a_field(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog)
    with pytest.raises(InvalidCommand):
        customer.correct(catalog, membership_id=m.membership_id, today=TODAY)
    with pytest.raises(InvalidCommand):
        customer.correct(
            catalog,
            membership_id=m.membership_id,
            subgroup_code=UNCHANGED,
            reference_code=UNCHANGED,
            today=TODAY,
        )
    assert m.version == 1


def test_correct_errors(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog)
    with pytest.raises(MembershipNotFound):
        customer.correct(catalog, membership_id=new_id(), reference_code="x", today=TODAY)
    with pytest.raises(UnknownSubgroup):
        customer.correct(
            catalog, membership_id=m.membership_id, subgroup_code="REKOMMENDERAD", today=TODAY
        )
    with pytest.raises(InvalidCommand):
        customer.correct(
            catalog, membership_id=m.membership_id, reference_code="x" * 65, today=TODAY
        )
    assert m.version == 1 and m.subgroup_code == "ALDER_65_PLUS"
    customer.remove(membership_id=m.membership_id, today=TODAY)
    with pytest.raises(AlreadyHistorical):
        customer.correct(catalog, membership_id=m.membership_id, reference_code="x", today=TODAY)


def _catalog_with_retired_subgroup() -> Catalog:
    return Catalog(
        "1",
        (
            Group(
                "G",
                "G",
                date(2000, 1, 1),
                subgroups=(
                    Subgroup("OLD", "Old", date(2000, 1, 1), date(2025, 12, 31)),
                    Subgroup("NEW", "New", date(2000, 1, 1)),
                ),
            ),
        ),
    )


def test_correct_to_a_retired_subgroup_is_not_selectable(customer: Customer) -> None:
    catalog = _catalog_with_retired_subgroup()
    m = customer.add_group(
        catalog, membership_id=new_id(), group_code="G", subgroup_code="NEW", today=TODAY
    )
    with pytest.raises(GroupNotSelectable):
        customer.correct(catalog, membership_id=m.membership_id, subgroup_code="OLD", today=TODAY)


def test_resending_a_retired_current_subgroup_is_accepted(customer: Customer) -> None:
    catalog = _catalog_with_retired_subgroup()
    m = customer.add_group(
        catalog, membership_id=new_id(), group_code="G", subgroup_code="OLD", today=date(2025, 6, 1)
    )
    _, current = customer.correct(
        catalog,
        membership_id=m.membership_id,
        subgroup_code="OLD",
        reference_code="fix",
        today=TODAY,
    )
    assert current.reference_code == "fix"


# -- remove --------------------------------------------------------------------


def test_remove_defaults_to_today(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2026, 1, 1))
    removed = customer.remove(membership_id=m.membership_id, today=TODAY)
    assert removed is m
    assert (m.valid_to, m.version, m.status) == (TODAY, 2, MembershipStatus.HISTORICAL)
    assert customer.get(m.membership_id) is m  # never deleted
    assert customer.historical() == [m] and customer.active() == []


def test_remove_with_a_back_dated_end(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2026, 1, 1))
    customer.remove(membership_id=m.membership_id, valid_to=date(2026, 1, 1), today=TODAY)
    assert m.valid_to == date(2026, 1, 1)


def test_remove_errors(customer: Customer, catalog: Catalog) -> None:
    m = add(customer, catalog, valid_from=date(2026, 1, 1))
    with pytest.raises(MembershipNotFound):
        customer.remove(membership_id=new_id(), today=TODAY)
    with pytest.raises(InvalidPeriod):
        customer.remove(membership_id=m.membership_id, valid_to=date(2025, 12, 31), today=TODAY)
    with pytest.raises(InvalidPeriod):
        customer.remove(
            membership_id=m.membership_id, valid_to=TODAY + timedelta(days=1), today=TODAY
        )
    assert m.is_active and m.version == 1
    customer.remove(membership_id=m.membership_id, today=TODAY)
    with pytest.raises(AlreadyHistorical):
        customer.remove(membership_id=m.membership_id, today=TODAY)
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
    c.remove(membership_id=ended.membership_id, today=TODAY)
    return {
        "INVALID_PERSONNUMMER": lambda: Customer(Personnummer.parse("191212121213")),
        "INVALID_COMMAND": lambda: add(c, catalog, "COVID_19", None, reference_code="x" * 65),
        "UNKNOWN_GROUP": lambda: add(c, catalog, "NOPE", None),
        "UNKNOWN_SUBGROUP": lambda: add(c, catalog, "COVID_19", "NOPE"),
        "GROUP_NOT_SELECTABLE": lambda: add(c, catalog, "COVID", None),
        "ALREADY_ACTIVE": lambda: add(c, catalog, "INFLUENSA", None),
        "MEMBERSHIP_NOT_FOUND": lambda: c.remove(membership_id=new_id(), today=TODAY),
        "ALREADY_HISTORICAL": lambda: c.remove(membership_id=ended.membership_id, today=TODAY),
        "INVALID_PERIOD": lambda: c.remove(
            membership_id=active.membership_id, valid_to=date(2025, 1, 1), today=TODAY
        ),
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
