"""A customer's group memberships and the rules for changing them.

`Customer` is the aggregate (one per personnummer, the Kafka key, so all
commands for it are ordered): every change goes through it, so the rule "at
most one active membership per group" holds inside one transaction. Nothing
here reads a clock; callers pass `today` (a local Swedish calendar date).

Periods are inclusive dates: `valid_to` is the last day the membership applied.
Memberships are never deleted: removing one ends it and keeps it as history, or marks
it entered in error (it never applied), which keeps it out of the nurse's lists.
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
    ENTERED_IN_ERROR = "entered_in_error"  # it never applied; kept, never listed to nurses


class RemovalReason(enum.StrEnum):
    """Why a nurse removes a membership (`customer_group.remove`'s `reason`)."""

    ENDED = "ended"  # the group no longer applies: historical, with its period
    ENTERED_IN_ERROR = "entered_in_error"  # it never applied


class Unchanged(enum.Enum):
    """Type of `UNCHANGED`: a field absent from an update, unlike None (clear it)."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: the nurse's user id and the unit acted for."""

    user_id: str
    unit_id: str


@dataclass(slots=True)
class Membership:
    """One period in one group; mutable entity owned by `Customer`.

    `status` is stored, not derived: an entered-in-error membership keeps its period.
    Provenance is plain values handed in by the caller: `created_at` (an aware instant),
    `created_by` and `updated_by` (None: the service itself, or not changed yet).
    Equality compares all fields, so a snapshot equals the entity until it changes.
    """

    membership_id: str
    group_code: str
    subgroup_code: str | None
    reference_code: str | None
    valid_from: date
    valid_to: date | None
    version: int
    status: MembershipStatus
    created_at: datetime
    created_by: Actor | None
    updated_by: Actor | None

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("membership version starts at 1")
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("membership valid_to is before valid_from")
        if self.status is not MembershipStatus.ENTERED_IN_ERROR and (
            (self.status is MembershipStatus.ACTIVE) != (self.valid_to is None)
        ):
            raise ValueError("an active membership has no valid_to, a historical one has")
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise ValueError("membership created_at must be an aware datetime")

    @property
    def is_active(self) -> bool:
        return self.status is MembershipStatus.ACTIVE


def _require_day(value: object, name: str) -> date:
    # datetime is a date subclass; a clock reading here means a caller bug.
    if not isinstance(value, date) or isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime.date")
    return value


def _require_instant(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError("now must be an aware datetime")
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


def _retired_end(
    catalog: Catalog, group_code: str, subgroup_code: str | None, valid_from: date, today: date
) -> date | None:
    """The day a membership in this group (and subgroup) ended because the group or
    subgroup ended before `today` (`Catalog.last_day`, never before `valid_from`); None
    while it still applies today (a later end is the retirement sweep's)."""
    last = catalog.last_day(group_code, subgroup_code)
    return None if last is None or last >= today else max(last, valid_from)


class Customer:
    """Aggregate: a personnummer and all its memberships, whatever their status."""

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
        return [m for m in self.memberships if m.status is MembershipStatus.ACTIVE]

    def historical(self) -> list[Membership]:
        """Ended memberships; entered-in-error ones are neither active nor historical."""
        return [m for m in self.memberships if m.status is MembershipStatus.HISTORICAL]

    def get(self, membership_id: str) -> Membership:
        for membership in self.memberships:
            if membership.membership_id == membership_id:
                return membership
        raise MembershipNotFound(
            f"Membership {show(membership_id)} does not exist for this customer"
        )

    # -- rules shared by add and correct -------------------------------------

    def _check_valid_from(self, valid_from: date, today: date) -> None:
        if valid_from > today:
            raise InvalidPeriod(
                f"valid_from {valid_from.isoformat()} is in the future "
                f"(today is {today.isoformat()})"
            )
        if valid_from < self.personnummer.birth_date:
            raise InvalidPeriod(f"valid_from {valid_from.isoformat()} is before the birth date")

    def _check_no_other_active(self, group_code: str, membership_id: str) -> None:
        others = (m for m in self.active() if m.membership_id != membership_id)
        if any(m.group_code == group_code for m in others):
            raise AlreadyActive(
                f"The customer already has an active membership in group {show(group_code)}"
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
        actor: Actor | None,
        now: datetime,
        today: date,
    ) -> Membership:
        """Start a membership (version 1) and return it.

        The group and subgroup must exist, then `valid_from` (default today) must lie
        neither in the future nor before the birth date (INVALID_PERIOD), then the group
        and subgroup must be selectable on `valid_from`: an after-registration
        (efterregistrering) chooses what applied on its day. A group or subgroup that
        has ended since is stored already ended on its last day (historical from the
        start). At most one active membership per group (ALREADY_ACTIVE); a historical
        one, or one stored already ended, does not block and is not blocked.
        `now` and `actor` are its provenance (`created_at`, `created_by`).
        """
        today = _require_day(today, "today")
        now = _require_instant(now)
        if not isinstance(membership_id, str) or not is_canonical_uuid(membership_id):
            raise InvalidCommand("membership_id must be a canonical lower-case UUID string")
        if any(m.membership_id == membership_id for m in self.memberships):
            raise InvalidCommand(f"membership_id {show(membership_id)} is already used")
        if not isinstance(group_code, str):
            raise InvalidCommand("group_code must be a string")
        subgroup = _optional_code(subgroup_code, "subgroup_code")
        reference = _reference_code(reference_code)
        start = today if valid_from is None else _require_day(valid_from, "valid_from")

        # A typo is UNKNOWN_* whatever the date, so existence is checked first.
        if subgroup is None:
            catalog.group(group_code)
        else:
            catalog.subgroup(group_code, subgroup)
        self._check_valid_from(start, today)
        catalog.require_selectable(group_code, subgroup, start)
        end = _retired_end(catalog, group_code, subgroup, start, today)
        if end is None:
            self._check_no_other_active(group_code, membership_id)

        membership = Membership(
            membership_id=membership_id,
            group_code=group_code,
            subgroup_code=subgroup,
            reference_code=reference,
            valid_from=start,
            valid_to=end,
            version=1,
            status=MembershipStatus.ACTIVE if end is None else MembershipStatus.HISTORICAL,
            created_at=now,
            created_by=actor,
            updated_by=None,
        )
        self.memberships.append(membership)
        return membership

    def correct(
        self,
        catalog: Catalog,
        *,
        membership_id: str,
        group_code: str | Unchanged | None = UNCHANGED,
        subgroup_code: str | Unchanged | None = UNCHANGED,
        reference_code: str | Unchanged | None = UNCHANGED,
        actor: Actor | None,
        today: date,
    ) -> tuple[Membership, Membership]:
        """Fix a wrong entry in place; return (snapshot before, the entity after).

        `UNCHANGED` leaves a field as is, None (or "") clears it (the group cannot be
        cleared); at least one field must be given. Active and historical memberships
        can be corrected, an entered-in-error one cannot (INVALID_COMMAND: it never
        applied, so there is nothing to correct). A new group without a subgroup clears
        the subgroup. A new group or subgroup follows the rules of `add_group`, judged
        on the membership's own `valid_from`: it must exist and be selectable on that
        day, no other active membership may be in the new group (while this one stays
        active), and a group or subgroup that has ended since ends the membership on
        its last day (an active one becomes historical; a historical one's end moves
        back to it). Re-sending the current group and subgroup is not re-validated, so a
        reference-code fix works even after they were retired. Every accepted correction
        bumps the version, also one that changes nothing: it is still a recorded command
        (duplicates are caught by command id). `actor` becomes `updated_by`.
        """
        today = _require_day(today, "today")
        if group_code is UNCHANGED and subgroup_code is UNCHANGED and reference_code is UNCHANGED:
            raise InvalidCommand(
                "An update must give group_code, subgroup_code and/or reference_code"
            )
        membership = self.get(membership_id)
        if membership.status is MembershipStatus.ENTERED_IN_ERROR:
            raise InvalidCommand(
                f"Membership {show(membership_id)} was entered in error and cannot be corrected"
            )

        new_group = membership.group_code
        if group_code is not UNCHANGED:
            if group_code is None or group_code == "":
                raise InvalidCommand("group_code cannot be cleared; give the right group")
            if not isinstance(group_code, str):
                raise InvalidCommand("group_code must be a string")
            new_group = group_code
        group_changed = new_group != membership.group_code
        new_subgroup = None if group_changed else membership.subgroup_code
        if subgroup_code is not UNCHANGED:
            new_subgroup = _optional_code(subgroup_code, "subgroup_code")
        new_reference = membership.reference_code
        if reference_code is not UNCHANGED:
            new_reference = _reference_code(reference_code)

        new_end = membership.valid_to
        if group_changed or (new_subgroup is not None and new_subgroup != membership.subgroup_code):
            catalog.require_selectable(new_group, new_subgroup, membership.valid_from)
            end = _retired_end(catalog, new_group, new_subgroup, membership.valid_from, today)
            if end is not None and (new_end is None or end < new_end):
                new_end = end
            if new_end is None and group_changed:
                self._check_no_other_active(new_group, membership_id)

        previous = replace(membership)
        membership.group_code = new_group
        membership.subgroup_code = new_subgroup
        membership.reference_code = new_reference
        if new_end != membership.valid_to:
            membership.valid_to = new_end
            membership.status = MembershipStatus.HISTORICAL
        membership.version += 1
        membership.updated_by = actor
        return previous, membership

    def remove(
        self,
        *,
        membership_id: str,
        valid_to: date | None = None,
        reason: RemovalReason = RemovalReason.ENDED,
        actor: Actor | None,
        today: date,
    ) -> Membership:
        """End a membership (`ENDED`) or mark it entered in error; it is kept either way.

        `ENDED` (active memberships only): `valid_to` (default today) is the last day it
        applied, so it may equal `valid_from`; it may be back-dated but not lie in the
        future, where the membership would be historical while it still applies.
        `ENTERED_IN_ERROR` (active or historical): it never applied; the status says so
        and the period stays as it was, so `valid_to` is not accepted with it. Either
        on a membership where it cannot apply is ALREADY_HISTORICAL.
        """
        today = _require_day(today, "today")
        membership = self.get(membership_id)
        if reason is RemovalReason.ENTERED_IN_ERROR:
            if membership.status is MembershipStatus.ENTERED_IN_ERROR:
                raise AlreadyHistorical(
                    f"Membership {show(membership_id)} is already entered in error"
                )
            if valid_to is not None:
                raise InvalidCommand(
                    "valid_to does not apply to reason entered_in_error: the period is kept"
                )
            membership.status = MembershipStatus.ENTERED_IN_ERROR
        elif reason is RemovalReason.ENDED:
            if not membership.is_active:
                raise AlreadyHistorical(
                    f"Membership {show(membership_id)} is already {membership.status.value}"
                )
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
            membership.status = MembershipStatus.HISTORICAL
        else:
            raise InvalidCommand(f"Unknown removal reason {show(reason)}")
        membership.version += 1
        membership.updated_by = actor
        return membership

    def retire(self, catalog: Catalog, *, today: date) -> list[Membership]:
        """End every active membership whose group or subgroup ended before `today`, on
        that last day (never before its own `valid_from`); return them.

        The service does this itself (the retirement sweep), so `updated_by` is None.
        Idempotent: a membership ended here is no longer active, so a second sweep, or
        a second process sweeping the same customer, finds nothing left to end.
        """
        today = _require_day(today, "today")
        ended = []
        for membership in self.active():
            end = _retired_end(
                catalog,
                membership.group_code,
                membership.subgroup_code,
                membership.valid_from,
                today,
            )
            if end is None:
                continue
            membership.valid_to = end
            membership.status = MembershipStatus.HISTORICAL
            membership.version += 1
            membership.updated_by = None
            ended.append(membership)
        return ended
