"""Which groups the prompt suggests to the nurse for one vaccination (a hint, never
applied by itself)."""

from __future__ import annotations

from datetime import date

from services.groups.domain.catalog import REQUESTED_AT_BOOKING, Catalog, Suggestion
from services.groups.domain.errors import DomainError
from services.groups.domain.membership import Customer


def suggestions_for(
    customer: Customer,
    catalog: Catalog,
    *,
    requested: tuple[str, str | None] | None,
    vaccine_code: str | None,
    today: date,
) -> list[Suggestion]:
    """The group the patient requested when booking (`requested`: group and subgroup
    code of a live booking), if still selectable, then the catalog's rules for the
    patient's age and the vaccine; one per group, none the customer already has."""
    active_groups = {m.group_code for m in customer.active()}
    found: list[Suggestion] = []
    if requested is not None:
        group_code, subgroup_code = requested
        try:
            catalog.require_selectable(group_code, subgroup_code, today)
            found.append(Suggestion(group_code, subgroup_code, REQUESTED_AT_BOOKING))
        except DomainError:
            pass  # requested online but not selectable (any more): no suggestion
    birth = customer.personnummer.birth_date
    age = customer.personnummer.age_on(today) if birth <= today else None
    found.extend(catalog.suggestions(age, vaccine_code, today))
    unique: list[Suggestion] = []
    seen: set[str] = set()
    for suggestion in found:
        if suggestion.group_code in active_groups or suggestion.group_code in seen:
            continue
        seen.add(suggestion.group_code)
        unique.append(suggestion)
    return unique
