"""The warehouse's records (CONTRACT.md, "Export"), built from the groups service's events
or from its database rows. Pure: no I/O.

Each record's value is the whole current state of its key, so a consumer that keeps the
last value per key (the compacted topic, or a warehouse upsert) holds the current state.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any

MEMBERSHIP_RECORD = "customer_group.membership_record"
VACCINATION_RECORD = "customer_group.vaccination_record"
EXPORT_SOURCE = "/customer-groups/export-service"

MEMBERSHIP_FIELDS = (
    "membership_id",
    "group_code",
    "group_name",
    "subgroup_code",
    "subgroup_name",
    "reference_code",
    "valid_from",
    "valid_to",
    "status",
    "version",
)

_RECORD_NS = uuid.UUID("3d5c2b8e-4f61-4a0e-9e7d-2c1b0a9f8e07")


class Pseudonymizer:
    """subject_id = HMAC-SHA256(key, personnummer): stable per key, not reversible without it."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self._key = key

    def subject_id(self, personnummer: str) -> str:
        return hmac.new(self._key, personnummer.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ExportRecord:
    """One record for the export topic: key, CloudEvent type and data."""

    key: str
    type: str
    data: dict[str, Any]
    updated_at: str

    @property
    def event_id(self) -> str:
        # Same state -> same id, so a re-sent record is recognisably the same record.
        version = str(self.data.get("version", ""))
        return str(uuid.uuid5(_RECORD_NS, f"{self.type}|{self.key}|{version}|{self.updated_at}"))


def membership_record(
    membership: dict[str, Any],
    personnummer: str,
    updated_at: str,
    pseudonymizer: Pseudonymizer,
    *,
    include_personnummer: bool = False,
) -> ExportRecord:
    data: dict[str, Any] = {name: membership.get(name) for name in MEMBERSHIP_FIELDS}
    data["subject_id"] = pseudonymizer.subject_id(personnummer)
    data["updated_at"] = updated_at
    if include_personnummer:
        data["personnummer"] = personnummer
    return ExportRecord(str(membership["membership_id"]), MEMBERSHIP_RECORD, data, updated_at)


def vaccination_record(
    *,
    vaccination_id: str,
    personnummer: str,
    unit_id: str,
    confirmed_at: str,
    memberships: list[dict[str, Any]],
    version: int,
    pseudonymizer: Pseudonymizer,
    include_personnummer: bool = False,
) -> ExportRecord:
    data: dict[str, Any] = {
        "vaccination_id": vaccination_id,
        "subject_id": pseudonymizer.subject_id(personnummer),
        "unit_id": unit_id,
        "confirmed_at": confirmed_at,
        "groups": [
            {
                "group_code": m.get("group_code"),
                "subgroup_code": m.get("subgroup_code"),
                "reference_code": m.get("reference_code"),
            }
            for m in memberships
        ],
        "version": version,
    }
    if include_personnummer:
        data["personnummer"] = personnummer
    return ExportRecord(vaccination_id, VACCINATION_RECORD, data, confirmed_at)
