"""What a link of the audit hash chain covers of its `audit_log` row: every column, in
one canonical JSON form, so the sealer and `audit-verify` hash the very same bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from services.groups.domain.audit_chain import AuditEntry

COLUMNS = ("id", "at", "action", "user_id", "unit_id", "personnummer", "membership_id", "detail")


def canonical_json(value: Any) -> str:
    """Stable JSON: keys sorted by code point, no whitespace, non-ASCII as itself.

    Raises TypeError for a value JSON cannot hold, ValueError for NaN or infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_instant(at: datetime) -> str:
    """UTC with all six fractional digits, whatever the zone it was read in."""
    if at.tzinfo is None:
        raise ValueError("an audit time must carry its zone")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_bytes(row: Mapping[Any, Any]) -> bytes:
    """Every column of the row as canonical JSON (UTF-8)."""
    values = {name: row[name] for name in COLUMNS}
    values["at"] = canonical_instant(row["at"])
    return canonical_json(values).encode("utf-8")


def entry_of(row: Mapping[Any, Any]) -> AuditEntry:
    return AuditEntry(int(row["id"]), canonical_bytes(row))
