"""The warehouse's records (CONTRACT.md, "Export"), built from the groups service's events
or from its database rows. Pure: no I/O.

Each record's value is the whole current state of its key, so a consumer that keeps the
last value per key (the compacted topic, or a warehouse upsert) holds the current state.
The live path (events), the backfill and the snapshot (database rows) all go through
`RecordBuilder`, so one state gives the same record, byte for byte, whichever path built it.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any

from services.common.ids import Uuid5Namespace

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
    "created_at",
    "created_by",
    "updated_by",
)

_RECORD_NS = uuid.UUID("3d5c2b8e-4f61-4a0e-9e7d-2c1b0a9f8e07")
# `str(uuid.uuid5(_RECORD_NS, name))`, computed without UUID objects.
record_uuid5 = Uuid5Namespace(_RECORD_NS)


class Pseudonymizer:
    """subject_id = HMAC-SHA256(key, personnummer): stable per key, not reversible without it."""

    def __init__(self, key: bytes, *, key_id: str | None = None) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        # Keyed once: a copy of the keyed state is cheaper than hmac.new per record.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        # Derived under a label no personnummer can equal, so it reveals nothing.
        derived = hmac.new(key, b"customer-groups pseudonym key id", hashlib.sha256)
        self.key_id = key_id or f"k-{derived.hexdigest()[:16]}"

    def subject_id(self, personnummer: str) -> str:
        mac = self._keyed.copy()
        mac.update(personnummer.encode())
        return mac.hexdigest()


@dataclass(frozen=True)
class ExportRecord:
    """One record for the export topic: key, CloudEvent type and data."""

    key: str
    type: str
    data: dict[str, Any]
    updated_at: str

    @property
    def event_id(self) -> str:
        # Same state -> same id, so a re-sent record is recognisably the same record; the
        # key id is covered, so a record re-keyed after a rotation is not a duplicate.
        version = str(self.data.get("version", ""))
        key_id = str(self.data.get("key_id", ""))
        return record_uuid5(f"{self.type}|{self.key}|{version}|{self.updated_at}|{key_id}")


def membership_record(
    membership: Mapping[str, Any],
    personnummer: str,
    updated_at: str,
    pseudonymizer: Pseudonymizer,
    *,
    include_personnummer: bool = False,
) -> ExportRecord:
    data: dict[str, Any] = {name: membership.get(name) for name in MEMBERSHIP_FIELDS}
    data["subject_id"] = pseudonymizer.subject_id(personnummer)
    data["key_id"] = pseudonymizer.key_id
    data["updated_at"] = updated_at
    if include_personnummer:
        data["personnummer"] = personnummer
    return ExportRecord(str(membership["membership_id"]), MEMBERSHIP_RECORD, data, updated_at)


# What each of a dose's `groups` says of its membership (CONTRACT.md, "Export"): its id,
# codes and names.
GROUP_FIELDS = MEMBERSHIP_FIELDS[: MEMBERSHIP_FIELDS.index("reference_code") + 1]
VACCINE_FIELDS = ("code", "name", "dose_number")


def vaccination_record(
    *,
    vaccination_id: str,
    personnummer: str,
    unit_id: str,
    administered_at: str | None,
    vaccine: Mapping[str, Any] | None,
    confirmed_at: str | None,
    basis: str,
    memberships: Sequence[Mapping[str, Any]],
    missing_group: bool,
    status: str,
    version: int,
    updated_at: str,
    pseudonymizer: Pseudonymizer,
    include_personnummer: bool = False,
) -> ExportRecord:
    """The dose-level record. `updated_at` (when this version was decided) is its
    CloudEvent time, and with the version makes its id."""
    data: dict[str, Any] = {
        "vaccination_id": vaccination_id,
        "subject_id": pseudonymizer.subject_id(personnummer),
        "key_id": pseudonymizer.key_id,
        "unit_id": unit_id,
        "administered_at": administered_at,
        "vaccine": (
            {name: vaccine.get(name) for name in VACCINE_FIELDS} if vaccine is not None else None
        ),
        "confirmed_at": confirmed_at,
        "basis": basis,
        "groups": [{name: m.get(name) for name in GROUP_FIELDS} for m in memberships],
        "missing_group": missing_group,
        "status": status,
        "version": version,
    }
    if include_personnummer:
        data["personnummer"] = personnummer
    return ExportRecord(vaccination_id, VACCINATION_RECORD, data, updated_at)


def local_instant(value: datetime, zone: tzinfo) -> str:
    """RFC 3339 with the offset of `zone` (the clinics' zone, in which the groups service
    writes its instants). Both paths format through here: an event's time arrives as text
    with an offset, a database row's as UTC, and only one form can be byte-identical."""
    if value.tzinfo is None:
        raise ValueError("an instant needs a time zone")
    return value.astimezone(zone).isoformat()


def _actor(user_id: str | None, unit_id: str | None) -> dict[str, str] | None:
    return None if user_id is None or unit_id is None else {"user_id": user_id, "unit_id": unit_id}


def membership_from_row(row: Mapping[str, Any], zone: tzinfo) -> dict[str, Any]:
    """A `memberships` row, joined with the catalog names, as the groups service's
    `membership_view` shows it (the "membership" of its events), `created_at` in `zone`.

    `catalog_group_name` / `catalog_subgroup_name` are None where the code is not in the
    catalog; the view then shows the code itself, and so does this.
    """
    valid_to: date | None = row["valid_to"]
    subgroup_code: str | None = row["subgroup_code"]
    subgroup_name: str | None = row["catalog_subgroup_name"]
    return {
        "membership_id": str(row["membership_id"]),
        "group_code": row["group_code"],
        "group_name": row["catalog_group_name"] or row["group_code"],
        "subgroup_code": subgroup_code,
        "subgroup_name": subgroup_name if subgroup_name is not None else subgroup_code,
        "reference_code": row["reference_code"],
        "valid_from": row["valid_from"].isoformat(),
        "valid_to": valid_to.isoformat() if valid_to is not None else None,
        "status": row["status"],
        "version": int(row["version"]),
        "created_at": local_instant(row["created_at"], zone),
        "created_by": _actor(row["created_by_user"], row["created_by_unit"]),
        "updated_by": _actor(row["updated_by_user"], row["updated_by_unit"]),
    }


@dataclass(frozen=True)
class RecordBuilder:
    """This deployment's way of building records: pseudonym key, personnummer opt-in and
    local zone. One instance per process, shared by every path that publishes or writes."""

    pseudonymizer: Pseudonymizer
    zone: tzinfo
    include_personnummer: bool = False

    def membership(
        self, membership: Mapping[str, Any], personnummer: str, updated_at: datetime
    ) -> ExportRecord:
        """`membership` as an event or `membership_from_row` shows it; its `created_at`
        (an instant, as text or datetime) is written in this zone, like `updated_at`."""
        created_at = membership.get("created_at")
        if isinstance(created_at, str):
            created_at = datetime.fromisoformat(created_at)
        return membership_record(
            {
                **membership,
                "created_at": (
                    local_instant(created_at, self.zone) if created_at is not None else None
                ),
            },
            personnummer,
            local_instant(updated_at, self.zone),
            self.pseudonymizer,
            include_personnummer=self.include_personnummer,
        )

    def vaccination(
        self,
        *,
        vaccination_id: str,
        personnummer: str,
        unit_id: str,
        administered_at: datetime | None,
        vaccine: Mapping[str, Any] | None,
        confirmed_at: datetime | None,
        basis: str,
        memberships: Sequence[Mapping[str, Any]],
        missing_group: bool,
        status: str,
        version: int,
        updated_at: datetime,
    ) -> ExportRecord:
        def instant(value: datetime | None) -> str | None:
            return local_instant(value, self.zone) if value is not None else None

        return vaccination_record(
            vaccination_id=vaccination_id,
            personnummer=personnummer,
            unit_id=unit_id,
            administered_at=instant(administered_at),
            vaccine=vaccine,
            confirmed_at=instant(confirmed_at),
            basis=basis,
            memberships=memberships,
            missing_group=missing_group,
            status=status,
            version=version,
            updated_at=local_instant(updated_at, self.zone),
            pseudonymizer=self.pseudonymizer,
            include_personnummer=self.include_personnummer,
        )

    def membership_from_row(self, row: Mapping[str, Any]) -> ExportRecord:
        """A `memberships` row (see `membership_from_row`); its updated_at is the change's time."""
        return self.membership(
            membership_from_row(row, self.zone), row["personnummer"], row["updated_at"]
        )

    def vaccination_from_row(self, row: Mapping[str, Any]) -> ExportRecord:
        """A `vaccination_confirmations` row (the dose record): the JSONB `memberships`
        holds the same membership views the confirmation event carried."""
        memberships = row["memberships"] or []
        vaccine = row["vaccine"]
        return self.vaccination(
            vaccination_id=str(row["vaccination_id"]),
            personnummer=row["personnummer"],
            unit_id=str(row["unit_id"]),
            administered_at=row["administered_at"],
            vaccine=vaccine if isinstance(vaccine, Mapping) else None,
            confirmed_at=row["confirmed_at"],
            basis=str(row["basis"]),
            memberships=[m for m in memberships if isinstance(m, Mapping)],
            missing_group=bool(row["missing_group"]),
            status=str(row["status"]),
            version=int(row["version"]),
            updated_at=row["updated_at"],
        )
