"""The rows of the batch write path as Python values, matched to the `orm` tables by
column name: what the repository loads (records of a table's row type, see
`batch_writer.READ`) and what one unit of work has yet to write, as the rows of
`batch_writer.write`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import orjson

from services.groups.adapters import batch_writer
from services.groups.domain.doses import Basis, Dose, DoseStatus, Vaccine
from services.groups.domain.membership import Actor, Membership, MembershipStatus


@dataclass
class BookingRow:
    """A `bookings` row; the fields are its columns."""

    booking_id: str
    unit_id: str
    personnummer: str
    start_time: datetime
    vaccine_code: str | None
    vaccine_name: str | None
    dose: int | None
    requested_group_code: str | None
    requested_subgroup_code: str | None
    status: str
    source_event_time: datetime | None
    updated_at: datetime


@dataclass
class PromptRow:
    """A `prompts` row; the fields are its columns."""

    prompt_id: str
    vaccination_id: str
    personnummer: str
    unit_id: str
    user_id: str
    booking_id: str | None
    vaccine_code: str | None
    event: bytes
    created_at: datetime
    closed_at: datetime | None = None


def _actor(user_id: str | None, unit_id: str | None) -> Actor | None:
    return None if user_id is None or unit_id is None else Actor(user_id, unit_id)


def membership(record: Mapping[str, Any], zone: tzinfo) -> Membership:
    """A `memberships` row as the domain's entity; `created_at` in the service's zone (the
    database hands instants out in UTC), so an event shows it as the one that created it."""
    return Membership(
        membership_id=str(record["membership_id"]),
        group_code=record["group_code"],
        subgroup_code=record["subgroup_code"],
        reference_code=record["reference_code"],
        valid_from=record["valid_from"],
        valid_to=record["valid_to"],
        version=record["version"],
        status=MembershipStatus(record["status"]),
        created_at=record["created_at"].astimezone(zone),
        created_by=_actor(record["created_by_user"], record["created_by_unit"]),
        updated_by=_actor(record["updated_by_user"], record["updated_by_unit"]),
    )


def booking(record: Mapping[str, Any]) -> BookingRow:
    return BookingRow(**{name: record[name] for name in BookingRow.__dataclass_fields__})


def prompt(record: Mapping[str, Any]) -> PromptRow:
    values = {name: record[name] for name in PromptRow.__dataclass_fields__}
    values["prompt_id"] = str(values["prompt_id"])
    return PromptRow(**values)


def _from_json(value: Any) -> Any:
    # JSONB inside a row-type record arrives as its text.
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def dose(record: Mapping[str, Any]) -> Dose:
    """A `vaccination_confirmations` row."""
    vaccine = _from_json(record["vaccine"])
    user_id, unit_id = record["actor_user_id"], record["actor_unit_id"]
    prompt_id = record["prompt_id"]
    return Dose(
        vaccination_id=record["vaccination_id"],
        personnummer=record["personnummer"],
        unit_id=record["unit_id"],
        basis=Basis(record["basis"]),
        status=DoseStatus(record["status"]),
        prompt_id=str(prompt_id) if prompt_id is not None else None,
        confirmed_at=record["confirmed_at"],
        administered_at=record["administered_at"],
        vaccine=Vaccine(**vaccine) if vaccine is not None else None,
        actor=Actor(user_id, unit_id) if user_id is not None and unit_id is not None else None,
        memberships=tuple(_from_json(record["memberships"])),
        version=record["version"],
        command_id=record["command_id"],
        updated_at=record["updated_at"],
    )


def dose_row(dose: Dose) -> dict[str, Any]:
    vaccine = dose.vaccine
    return {
        "vaccination_id": dose.vaccination_id,
        "prompt_id": dose.prompt_id,
        "personnummer": dose.personnummer,
        "unit_id": dose.unit_id,
        "actor_user_id": dose.actor.user_id if dose.actor else None,
        "actor_unit_id": dose.actor.unit_id if dose.actor else None,
        "command_id": dose.command_id,
        "basis": dose.basis.value,
        "status": dose.status.value,
        "memberships": _json(list(dose.memberships)),
        "missing_group": dose.missing_group,
        "confirmed_at": dose.confirmed_at,
        "administered_at": dose.administered_at,
        # SQL NULL, not JSON null, for a dose not registered.
        "vaccine": _json(asdict(vaccine)) if vaccine is not None else None,
        "version": dose.version,
        "updated_at": dose.updated_at,
    }


@dataclass
class MembershipWrite:
    personnummer: str  # written for a new membership only: none moves to another customer
    membership: Membership
    new: bool  # created in this unit of work: inserted, else updated
    updated_at: datetime

    def row(self) -> dict[str, Any]:
        m = self.membership
        created_by, updated_by = m.created_by, m.updated_by
        return {
            "membership_id": m.membership_id,
            "personnummer": self.personnummer,
            "group_code": m.group_code,
            "subgroup_code": m.subgroup_code,
            "reference_code": m.reference_code,
            "valid_from": m.valid_from,
            "valid_to": m.valid_to,
            "version": m.version,
            "status": m.status.value,
            "created_at": m.created_at,
            "updated_at": self.updated_at,
            "created_by_user": created_by.user_id if created_by else None,
            "created_by_unit": created_by.unit_id if created_by else None,
            "updated_by_user": updated_by.user_id if updated_by else None,
            "updated_by_unit": updated_by.unit_id if updated_by else None,
        }


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass
class Changes:
    """What one unit of work has yet to write, each keyed by its row's identity."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    bookings: dict[str, BookingRow] = field(default_factory=dict)
    memberships: dict[str, MembershipWrite] = field(default_factory=dict)
    new_prompts: dict[str, PromptRow] = field(default_factory=dict)
    closed_prompts: dict[str, datetime] = field(default_factory=dict)
    doses: dict[str, Dose] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def rows(self) -> dict[batch_writer.Columns, batch_writer.Rows]:
        memberships = self.memberships.values()
        return {
            batch_writer.CUSTOMERS: list(self.customers.values()),
            batch_writer.BOOKINGS: [vars(row) for row in self.bookings.values()],
            batch_writer.NEW_MEMBERSHIPS: [w.row() for w in memberships if w.new],
            batch_writer.CHANGED_MEMBERSHIPS: [w.row() for w in memberships if not w.new],
            batch_writer.NEW_PROMPTS: [vars(p) for p in self.new_prompts.values()],
            batch_writer.CLOSED_PROMPTS: [
                {"prompt_id": prompt_id, "closed_at": closed_at}
                for prompt_id, closed_at in self.closed_prompts.items()
            ],
            batch_writer.CONFIRMATIONS: [dose_row(d) for d in self.doses.values()],
            batch_writer.AUDIT: [{**a, "detail": _json(a["detail"])} for a in self.audit],
        }

    def frees_a_slot_taken(self, stored_active: Mapping[str, tuple[str, str]]) -> bool:
        """A change here frees a customer's one active place in a group (the membership is
        no longer active there) that another membership written here takes (see
        `batch_writer.UPDATE_MEMBERSHIPS`). `stored_active` maps the id of each membership
        read as active to its (personnummer, group_code) as stored."""
        freed: set[tuple[str, str]] = set()
        taken: set[tuple[str, str]] = set()
        for w in self.memberships.values():
            m = w.membership
            if w.new:
                if m.is_active:
                    taken.add((w.personnummer, m.group_code))
                continue
            stored = stored_active.get(m.membership_id)
            if stored is None:
                continue  # was not active: frees nothing and, never reactivated, takes nothing
            if not m.is_active or m.group_code != stored[1]:
                freed.add(stored)
            if m.is_active and m.group_code != stored[1]:
                taken.add((stored[0], m.group_code))
        return not freed.isdisjoint(taken)
