"""The outgoing messages' `data`, exactly as CONTRACT.md names the fields."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from services.groups.domain.catalog import Catalog, Group, Suggestion
from services.groups.domain.doses import Dose
from services.groups.domain.errors import DomainError
from services.groups.domain.membership import Actor, Customer, Membership
from services.groups.service_layer.context import DOSE_ZONE

EVENT_SOURCE = "/customer-groups/groups-service"

ADDED = "customer_group.added"
UPDATED = "customer_group.updated"
REMOVED = "customer_group.removed"
REJECTED = "customer_group.command_rejected"
CONFIRMED = "customer_group.vaccination_groups_confirmed"
PROMPT = "customer_group.prompt"
CATALOG_GROUP = "customer_group.catalog_group"

GROUP_RETIRED = "group_retired"  # `removed`'s reason when the catalog ended the group


def membership_view(membership: Membership, catalog: Catalog) -> dict[str, Any]:
    group_name = membership.group_code
    subgroup_name: str | None = None
    try:
        group = catalog.group(membership.group_code)
        group_name = group.name
        if membership.subgroup_code is not None:
            subgroup_name = group.subgroup(membership.subgroup_code).name
    except DomainError:
        # A code no longer in the catalog file: keep the code visible rather than fail.
        subgroup_name = membership.subgroup_code
    return {
        "membership_id": membership.membership_id,
        "group_code": membership.group_code,
        "group_name": group_name,
        "subgroup_code": membership.subgroup_code,
        "subgroup_name": subgroup_name,
        "reference_code": membership.reference_code,
        "valid_from": membership.valid_from.isoformat(),
        "valid_to": membership.valid_to.isoformat() if membership.valid_to else None,
        "status": membership.status.value,
        "version": membership.version,
        "created_at": membership.created_at.isoformat(),
        "created_by": _by(membership.created_by),
        "updated_by": _by(membership.updated_by),
    }


def _by(actor: Actor | None) -> dict[str, str] | None:
    return None if actor is None else actor_view(actor.user_id, actor.unit_id)


PROMPT_HISTORY_LIMIT = 50
"""A prompt lists at most this many historical memberships (contract), the latest ended."""


def customer_groups_view(
    customer: Customer, catalog: Catalog, *, historical_limit: int | None = None
) -> dict[str, Any]:
    """The nurse's lists: active, and historical most recently ended first (all of them,
    or the first `historical_limit`, then with `historical_total`). Entered-in-error
    memberships are in neither."""
    historical = customer.historical()
    # Latest end first; ties by latest start, then creation, so the order is stable.
    ordered = sorted(
        historical,
        key=lambda m: (m.valid_to or m.valid_from, m.valid_from, m.created_at, m.membership_id),
        reverse=True,
    )
    view: dict[str, Any] = {
        "active": [membership_view(m, catalog) for m in customer.active()],
        "historical": [membership_view(m, catalog) for m in ordered[:historical_limit]],
    }
    if historical_limit is not None:
        view["historical_total"] = len(historical)
    return view


def catalog_view(groups: tuple[Group, ...]) -> list[dict[str, Any]]:
    return [
        {
            "group_code": g.code,
            "name": g.name,
            "subgroups": [{"subgroup_code": s.code, "name": s.name} for s in g.subgroups],
        }
        for g in groups
    ]


def _iso(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def catalog_group_view(group: Group, catalog_version: str) -> dict[str, Any]:
    """A `customer_group.catalog_group`: the group with its whole validity and every
    subgroup, retired ones included (unlike the prompt's `catalog`, which lists what is
    selectable today)."""
    return {
        "group_code": group.code,
        "name": group.name,
        "valid_from": group.valid_from.isoformat(),
        "valid_to": _iso(group.valid_to),
        "subgroups": [
            {
                "subgroup_code": s.code,
                "name": s.name,
                "valid_from": s.valid_from.isoformat(),
                "valid_to": _iso(s.valid_to),
            }
            for s in group.subgroups
        ],
        "catalog_version": catalog_version,
    }


def catalog_document(catalog: Catalog) -> dict[str, Any]:
    """What `GET /catalog` answers: every group of the catalog in force."""
    return {
        "catalog_version": catalog.version,
        "groups": [catalog_group_view(g, catalog.version) for g in catalog.groups],
    }


def suggestion_view(suggestion: Suggestion) -> dict[str, Any]:
    return {
        "group_code": suggestion.group_code,
        "subgroup_code": suggestion.subgroup_code,
        "reason": suggestion.reason,
    }


def actor_view(user_id: str, unit_id: str) -> dict[str, str]:
    return {"user_id": user_id, "unit_id": unit_id}


def retired_data(personnummer: str, membership: Membership, catalog: Catalog) -> dict[str, Any]:
    """`customer_group.removed` for a membership the retirement sweep ended: no command
    and no actor caused it."""
    return {
        "command_id": None,
        "personnummer": personnummer,
        "actor": None,
        "reason": GROUP_RETIRED,
        "membership": membership_view(membership, catalog),
    }


def confirmation_data(dose: Dose) -> dict[str, Any]:
    """`vaccination_groups_confirmed` of one version of a dose record. Instants in
    Europe/Stockholm time, as every instant the service writes."""
    actor, vaccine = dose.actor, dose.vaccine
    return {
        "command_id": dose.command_id,
        "prompt_id": dose.prompt_id,
        "vaccination_id": dose.vaccination_id,
        "personnummer": dose.personnummer,
        "unit_id": dose.unit_id,
        "actor": actor_view(actor.user_id, actor.unit_id) if actor else None,
        "basis": dose.basis.value,
        "status": dose.status.value,
        "confirmed_at": _instant(dose.confirmed_at),
        "administered_at": _instant(dose.administered_at),
        "vaccine": (
            {"code": vaccine.code, "name": vaccine.name, "dose_number": vaccine.dose_number}
            if vaccine
            else None
        ),
        "memberships": list(dose.memberships),
        "missing_group": dose.missing_group,
        "version": dose.version,
    }


def _instant(value: datetime | None) -> str | None:
    return value.astimezone(DOSE_ZONE).isoformat() if value is not None else None


def rejected_data(
    command_id: str, personnummer: str | None, reason_code: str, message: str
) -> dict[str, Any]:
    return {
        "command_id": command_id,
        "personnummer": personnummer,
        "reason_code": reason_code,
        "message": message,
    }
