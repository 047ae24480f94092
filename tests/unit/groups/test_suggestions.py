"""The prompt's suggestions (domain rule): the booking's request first, then the
catalog's rules; one per group, none the customer already has. On the example catalog,
since the shipped one (the guide's) has no rules."""

from __future__ import annotations

import uuid

from services.groups.domain.catalog import CATALOG_RULE, REQUESTED_AT_BOOKING, Catalog
from services.groups.domain.membership import Customer
from services.groups.domain.personnummer import Personnummer
from services.groups.domain.suggestions import suggestions_for
from tests.unit.groups.conftest import NOW, TODAY

ELDERLY = Personnummer.parse("193001012388")  # over 75: COVID_19 / REKOMMENDERAD by rule
COVID_VACCINE = "J07BN01"


def pairs(
    customer: Customer, catalog: Catalog, **kwargs: object
) -> list[tuple[str, str | None, str]]:
    found = suggestions_for(customer, catalog, today=TODAY, **kwargs)
    return [(s.group_code, s.subgroup_code, s.reason) for s in found]


def test_the_booking_request_comes_first_and_a_group_is_suggested_once(
    example_catalog: Catalog,
) -> None:
    customer = Customer(ELDERLY)
    found = pairs(
        customer,
        example_catalog,
        requested=("COVID_19", "RISKGRUPP"),
        vaccine_code=COVID_VACCINE,
    )
    assert found == [("COVID_19", "RISKGRUPP", REQUESTED_AT_BOOKING)]
    by_rule = pairs(customer, example_catalog, requested=None, vaccine_code=COVID_VACCINE)
    assert by_rule == [("COVID_19", "REKOMMENDERAD", CATALOG_RULE)]


def test_a_request_no_longer_selectable_is_no_suggestion(example_catalog: Catalog) -> None:
    found = pairs(Customer(ELDERLY), example_catalog, requested=("COVID", None), vaccine_code=None)
    assert found == []


def test_a_group_the_customer_has_is_not_suggested(example_catalog: Catalog) -> None:
    customer = Customer(ELDERLY)
    customer.add_group(
        example_catalog,
        membership_id=str(uuid.uuid4()),
        group_code="COVID_19",
        actor=None,
        now=NOW,
        today=TODAY,
    )
    found = pairs(
        customer, example_catalog, requested=("COVID_19", None), vaccine_code=COVID_VACCINE
    )
    assert found == []
