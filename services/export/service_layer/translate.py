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
        data = _require(event.data, "vaccination_id", "personnummer", "unit_id")
        memberships = data.get("memberships") or []
        if not isinstance(memberships, list):
            raise PoisonRecord("SCHEMA_VIOLATION", "memberships must be a list")
        confirmed_at = data.get("confirmed_at")
        return [
            builder.vaccination(
                vaccination_id=str(data["vaccination_id"]),
                personnummer=str(data["personnummer"]),
                unit_id=str(data["unit_id"]),
                # The confirmation's own instant, which the groups service also stores.
                confirmed_at=(
                    _instant(confirmed_at, "confirmed_at") if confirmed_at else _time(event)
                ),
                memberships=[m for m in memberships if isinstance(m, dict)],
                version=_version(data.get("version")),
            )
        ]
    raise PoisonRecord("UNKNOWN_TYPE", f"type {event.type[:100]!r} is not exported")
