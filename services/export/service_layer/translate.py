"""From the groups service's events to export records."""

from __future__ import annotations

from typing import Any

from services.common.envelope import CloudEvent, PoisonRecord
from services.export.domain.records import (
    ExportRecord,
    Pseudonymizer,
    membership_record,
    vaccination_record,
)

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


def _time(event: CloudEvent) -> str:
    if event.time is None:
        raise PoisonRecord("SCHEMA_VIOLATION", "event has no time")
    return event.time.isoformat()


def records_from_event(
    event: CloudEvent, pseudonymizer: Pseudonymizer, *, include_personnummer: bool
) -> list[ExportRecord]:
    if event.type in IGNORED:
        return []
    if event.type in MEMBERSHIP_EVENTS:
        data = _require(event.data, "personnummer", "membership")
        membership = _require(data["membership"], "membership_id", "group_code", "version")
        return [
            membership_record(
                membership,
                str(data["personnummer"]),
                _time(event),
                pseudonymizer,
                include_personnummer=include_personnummer,
            )
        ]
    if event.type == CONFIRMED:
        data = _require(event.data, "vaccination_id", "personnummer", "unit_id")
        memberships = data.get("memberships") or []
        if not isinstance(memberships, list):
            raise PoisonRecord("SCHEMA_VIOLATION", "memberships must be a list")
        return [
            vaccination_record(
                vaccination_id=str(data["vaccination_id"]),
                personnummer=str(data["personnummer"]),
                unit_id=str(data["unit_id"]),
                confirmed_at=str(data.get("confirmed_at") or _time(event)),
                memberships=[m for m in memberships if isinstance(m, dict)],
                version=int(data.get("version") or 1),
                pseudonymizer=pseudonymizer,
                include_personnummer=include_personnummer,
            )
        ]
    raise PoisonRecord("UNKNOWN_TYPE", f"type {event.type[:100]!r} is not exported")
