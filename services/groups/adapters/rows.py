"""The rows of the batch write path as Python values, matched to the `orm` tables by
column name: what the repository loads (records of a table's row type, see
`batch_writer.READ`) and what one unit of work has yet to write, as the rows of
`batch_writer.write`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import orjson

from services.groups.adapters import batch_writer
from services.groups.domain.doses import Actor, Basis, Dose, DoseStatus, Vaccine
from services.groups.domain.membership import Membership


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


# The domain's membership fields are `memberships` columns of the same names.
_MEMBERSHIP_FIELDS = tuple(f.name for f in fields(Membership))


def membership(record: Mapping[str, Any]) -> Membership:
    values = {name: record[name] for name in _MEMBERSHIP_FIELDS}
    values["membership_id"] = str(values["membership_id"])
    return Membership(**values)


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
    personnummer: str
    membership: Membership
    user_id: str
    unit_id: str
    created_at: datetime | None  # set for a membership created in this unit of work
    updated_at: datetime

    def row(self) -> dict[str, Any]:
        return {
            **{name: getattr(self.membership, name) for name in _MEMBERSHIP_FIELDS},
            "personnummer": self.personnummer,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "updated_by_user": self.user_id,
            "updated_by_unit": self.unit_id,
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
            batch_writer.NEW_MEMBERSHIPS: [
                w.row() for w in memberships if w.created_at is not None
            ],
            batch_writer.CHANGED_MEMBERSHIPS: [
                w.row() for w in memberships if w.created_at is None
            ],
            batch_writer.NEW_PROMPTS: [vars(p) for p in self.new_prompts.values()],
            batch_writer.CLOSED_PROMPTS: [
                {"prompt_id": prompt_id, "closed_at": closed_at}
                for prompt_id, closed_at in self.closed_prompts.items()
            ],
            batch_writer.CONFIRMATIONS: [dose_row(d) for d in self.doses.values()],
            batch_writer.AUDIT: [{**a, "detail": _json(a["detail"])} for a in self.audit],
        }

    def restarts_an_ended_group(self, owners: Mapping[str, str]) -> bool:
        """A group ended here starts again for the same customer (see
        `batch_writer.UPDATE_MEMBERSHIPS`); `owners` maps membership ids to personnummer."""
        ended = {
            (owners.get(w.membership.membership_id), w.membership.group_code)
            for w in self.memberships.values()
            if w.created_at is None and w.membership.valid_to is not None
        }
        return any(
            (w.personnummer, w.membership.group_code) in ended
            for w in self.memberships.values()
            if w.created_at is not None
        )
