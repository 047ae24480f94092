"""From the groups service's events to export records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.envelope import CloudEvent, PoisonRecord
from services.export.domain.records import ExportRecord, RecordBuilder

MEMBERSHIP_EVENTS = frozenset(
    {"customer_group.added", "customer_group.updated", "customer_group.removed"}
)
CONFIRMED = "customer_group.vaccination_groups_confirmed"
IGNORED = frozenset({"customer_group.command_rejected"})


def _require(data: Any, *names: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PoisonRecord("SCHEMA_VIOLATION", "data must be an object")
    missing = [n for n in names if data.get(n) in (None, "")]
    if missing:
        raise PoisonRecord("SCHEMA_VIOLATION", f"missing fields: {', '.join(missing)}")
    return data


def _time(event: CloudEvent) -> datetime:
    if event.time is None:
        raise PoisonRecord("SCHEMA_VIOLATION", "event has no time")
    if event.time.tzinfo is None:
        raise PoisonRecord("SCHEMA_VIOLATION", "event time has no offset")
    return event.time


def _instant(value: Any, name: str) -> datetime:
    """An RFC 3339 instant with offset from the event's data."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise PoisonRecord("SCHEMA_VIOLATION", f"{name} is not RFC 3339") from None
    if parsed.tzinfo is None:
        raise PoisonRecord("SCHEMA_VIOLATION", f"{name} has no offset")
    return parsed


def _version(value: Any) -> int:
    # A bad value must dead-letter, not raise ValueError: the pipeline retries those forever.
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PoisonRecord("SCHEMA_VIOLATION", "version must be a positive integer")
    return value


def _optional_instant(data: dict[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    return _instant(value, name) if value is not None else None


def _vaccination(event: CloudEvent, builder: RecordBuilder) -> ExportRecord:
    """A version of the dose record. A confirmation of contract revision 1 (a popup close,
    before registrations) lacks the dose's newer fields: it was a completed popup dose."""
    data = _require(event.data, "vaccination_id", "personnummer", "unit_id")
    memberships = data.get("memberships") or []
    if not isinstance(memberships, list):
        raise PoisonRecord("SCHEMA_VIOLATION", "memberships must be a list")
    vaccine = data.get("vaccine")
    if vaccine is not None and not isinstance(vaccine, dict):
        raise PoisonRecord("SCHEMA_VIOLATION", "vaccine must be an object or null")
    groups = [m for m in memberships if isinstance(m, dict)]
    status = str(data.get("status") or "completed")
    missing_group = data.get("missing_group")
    return builder.vaccination(
        vaccination_id=str(data["vaccination_id"]),
        personnummer=str(data["personnummer"]),
        unit_id=str(data["unit_id"]),
        administered_at=_optional_instant(data, "administered_at"),
        vaccine=vaccine,
        confirmed_at=_optional_instant(data, "confirmed_at"),
        basis=str(data.get("basis") or "popup"),
        memberships=groups,
        missing_group=(
            bool(missing_group)
            if isinstance(missing_group, bool)
            else status == "completed" and not groups
        ),
        status=status,
        version=_version(data.get("version")),
        # When this version was decided: the groups service dates the event with it.
        updated_at=_time(event),
    )


def records_from_event(event: CloudEvent, builder: RecordBuilder) -> list[ExportRecord]:
    if event.type in IGNORED:
        return []
    if event.type in MEMBERSHIP_EVENTS:
        data = _require(event.data, "personnummer", "membership")
        # created_at names an event of contract revision 2 or later; an older one lacks
        # the provenance a record carries (the backfill republishes it from the database).
        membership = _require(
            data["membership"], "membership_id", "group_code", "version", "created_at"
        )
        _instant(membership["created_at"], "created_at")
        # updated_at is the event's time: the event carries no other instant of the change.
        return [builder.membership(membership, str(data["personnummer"]), _time(event))]
    if event.type == CONFIRMED:
        return [_vaccination(event, builder)]
    raise PoisonRecord("UNKNOWN_TYPE", f"type {event.type[:100]!r} is not exported")
