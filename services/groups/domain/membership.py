"""A customer's group memberships and the rules for changing them.

`Customer` is the aggregate (one per personnummer, the Kafka key, so all
commands for it are ordered): every change goes through it, so the rule "at
most one active membership per group" holds inside one transaction. Nothing
here reads a clock; callers pass `today` (a local Swedish calendar date).

Periods are inclusive dates: `valid_to` is the last day the membership applied.
Memberships are never deleted; removing one ends it and keeps it as history.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Final

from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import (
    AlreadyActive,
    AlreadyHistorical,
    InvalidCommand,
    InvalidPeriod,
    MembershipNotFound,
    show,
)
from services.groups.domain.ids import is_canonical_uuid
from services.groups.domain.personnummer import Personnummer, contains_personnummer

REFERENCE_CODE_MAX: Final = 64


class MembershipStatus(enum.StrEnum):
    ACTIVE = "active"
    HISTORICAL = "historical"


class Unchanged(enum.Enum):
    """Type of `UNCHANGED`: a field absent from an update, unlike None (clear it)."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED


@dataclass(slots=True)
class Membership:
    """One period in one group; mutable entity owned by `Customer`.

    Equality compares all fields, so a snapshot equals the entity until it changes.
    """

    membership_id: str
    group_code: str
    subgroup_code: str | None
    reference_code: str | None
    valid_from: date
    valid_to: date | None
    version: int

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("membership version starts at 1")
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("membership valid_to is before valid_from")

    @property
    def status(self) -> MembershipStatus:
        """Historical iff ended: removal sets valid_to, nothing else does."""
        if self.valid_to is None:
            return MembershipStatus.ACTIVE
        return MembershipStatus.HISTORICAL

    @property
    def is_active(self) -> bool:
        return self.valid_to is None


def _require_day(value: object, name: str) -> date:
    # datetime is a date subclass; a clock reading here means a caller bug.
    if not isinstance(value, date) or isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime.date")
    return value


def _optional_code(value: object, field: str) -> str | None:
    """Codes are given as str or None; an empty string means "none chosen"."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidCommand(f"{field} must be a string or null")
    return value


def _reference_code(value: object) -> str | None:
    """Trimmed, at most 64 characters; empty means none. Never echoed in messages."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidCommand("reference_code must be a string or null")
    value = value.strip()
    if not value:
        return None
    if len(value) > REFERENCE_CODE_MAX:
        raise InvalidCommand(
            f"reference_code is {len(value)} characters; at most {REFERENCE_CODE_MAX} allowed"
        )
    if not value.isprintable():
        raise InvalidCommand("reference_code contains control characters")
    if contains_personnummer(value):
        raise InvalidCommand(
            "reference_code must not contain a personnummer: the export is pseudonymised, "
            "so free text may not carry an identity"
        )
    return value


class Customer:
    """Aggregate: a personnummer and all its memberships, active and historical."""

    def __init__(self, personnummer: Personnummer, memberships: Iterable[Membership] = ()) -> None:
        self.personnummer = personnummer
        self.memberships: list[Membership] = list(memberships)
        ids = [m.membership_id for m in self.memberships]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate membership_id")
        active = [m.group_code for m in self.memberships if m.is_active]
        if len(set(active)) != len(active):
            raise ValueError("more than one active membership in the same group")

    def __repr__(self) -> str:
        return f"Customer(<redacted>, memberships={len(self.memberships)})"

    # -- queries -----------------------------------------------------------

    def active(self) -> list[Membership]:
        return [m for m in self.memberships if m.is_active]

    def historical(self) -> list[Membership]:
        return [m for m in self.memberships if not m.is_active]

    def get(self, membership_id: str) -> Membership:
        for membership in self.memberships:
            if membership.membership_id == membership_id:
                return membership
        raise MembershipNotFound(
            f"Membership {show(membership_id)} does not exist for this customer"
        )

    # -- commands ----------------------------------------------------------

    def add_group(
        self,
        catalog: Catalog,
        *,
        membership_id: str,
        group_code: str,
        subgroup_code: str | None = None,
        reference_code: str | None = None,
        valid_from: date | None = None,
        today: date,
    ) -> Membership:
        """Start a membership (version 1) and return it.

        The group and subgroup must be selectable on `today`, not on
        `valid_from`: the nurse picks from what the catalog offers now, also
        when after-registering (efterregistrering) with a back-dated
        `valid_from`. A `valid_from` in the future is INVALID_PERIOD: a
        membership that has not started yet would look active. At most one
        active membership per group (ALREADY_ACTIVE); a historical one in the
        same group does not block a new one.
        """
        today = _require_day(today, "today")
        if not isinstance(membership_id, str) or not is_canonical_uuid(membership_id):
            raise InvalidCommand("membership_id must be a canonical lower-case UUID string")
        if any(m.membership_id == membership_id for m in self.memberships):
            raise InvalidCommand(f"membership_id {show(membership_id)} is already used")
        if not isinstance(group_code, str):
            raise InvalidCommand("group_code must be a string")
        subgroup = _optional_code(subgroup_code, "subgroup_code")
        reference = _reference_code(reference_code)
        start = today if valid_from is None else _require_day(valid_from, "valid_from")

        catalog.require_selectable(group_code, subgroup, today)
        if start > today:
            raise InvalidPeriod(
                f"valid_from {start.isoformat()} is in the future (today is {today.isoformat()})"
            )
        if any(m.group_code == group_code for m in self.active()):
            raise AlreadyActive(
                f"The customer already has an active membership in group {show(group_code)}"
            )

        membership = Membership(
            membership_id=membership_id,
            group_code=group_code,
            subgroup_code=subgroup,
            reference_code=reference,
            valid_from=start,
            valid_to=None,
            version=1,
        )
        self.memberships.append(membership)
        return membership

    def correct(
        self,
        catalog: Catalog,
        *,
        membership_id: str,
        subgroup_code: str | Unchanged | None = UNCHANGED,
        reference_code: str | Unchanged | None = UNCHANGED,
        today: date,
    ) -> tuple[Membership, Membership]:
        """Fix a wrong entry in place; return (snapshot before, the entity after).

        `UNCHANGED` leaves a field as is, None (or "") clears it; at least one
        field must be given. Only active memberships can be corrected. A new
        subgroup must exist in the membership's group, and both must be
        selectable today; re-sending the current subgroup is not re-validated, so a
        reference-code fix works even after the subgroup was retired. Every
        accepted correction bumps the version, also one that changes nothing:
        it is still a recorded command (duplicates are caught by command id).
        """
        today = _require_day(today, "today")
        if subgroup_code is UNCHANGED and reference_code is UNCHANGED:
            raise InvalidCommand("An update must give subgroup_code and/or reference_code")
        membership = self.get(membership_id)
        if not membership.is_active:
            raise AlreadyHistorical(
                f"Membership {show(membership_id)} is historical and cannot be corrected"
            )

        new_subgroup = membership.subgroup_code
        if subgroup_code is not UNCHANGED:
            new_subgroup = _optional_code(subgroup_code, "subgroup_code")
        new_reference = membership.reference_code
        if reference_code is not UNCHANGED:
            new_reference = _reference_code(reference_code)
        if new_subgroup is not None and new_subgroup != membership.subgroup_code:
            catalog.require_selectable(membership.group_code, new_subgroup, today)

        previous = replace(membership)
        membership.subgroup_code = new_subgroup
        membership.reference_code = new_reference
        membership.version += 1
        return previous, membership

    def remove(
        self, *, membership_id: str, valid_to: date | None = None, today: date
    ) -> Membership:
        """End an active membership; it becomes historical and is kept.

        `valid_to` (default today) is the last day it applied, so it may equal
        `valid_from`. It may be back-dated but not lie in the future: status is
        derived from `valid_to` being set, so a future end would make the
        membership historical while it still applies.
        """
        today = _require_day(today, "today")
        membership = self.get(membership_id)
        if not membership.is_active:
            raise AlreadyHistorical(f"Membership {show(membership_id)} is already historical")
        end = today if valid_to is None else _require_day(valid_to, "valid_to")
        if end > today:
            raise InvalidPeriod(
                f"valid_to {end.isoformat()} is in the future (today is {today.isoformat()})"
            )
        if end < membership.valid_from:
            raise InvalidPeriod(
                f"valid_to {end.isoformat()} is before the membership's valid_from "
                f"{membership.valid_from.isoformat()}"
            )
        membership.valid_to = end
        membership.version += 1
        return membership
