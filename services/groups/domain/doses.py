"""The dose-level record: which memberships a vaccination was given under.

One record per `vaccination_id`. Its groups are the memberships whose period covers the
day of the dose; the day is the Europe/Stockholm day of `administered_at` once the dose
is registered (`vaccination.registered`), else of `confirmed_at`, when the popup was
closed (CONTRACT.md, "vaccination_groups_confirmed"). Once registered, the registration
decides, whatever the order in which the popup's close and the registration arrive.

Pure: callers pass instants, memberships and the zone (Europe/Stockholm, which the
contract fixes); nothing here reads a clock, a zone database or a table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, tzinfo
from typing import Any, Final

from services.groups.domain.membership import Actor, Membership, MembershipStatus


class Basis(enum.StrEnum):
    POPUP = "popup"  # only the popup's close is known
    REGISTRATION = "registration"  # the dose is registered: its time decides


class DoseStatus(enum.StrEnum):
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered_in_error"  # registered by mistake: no dose was given


@dataclass(frozen=True)
class Vaccine:
    code: str
    name: str
    dose_number: int | None = None


@dataclass(frozen=True)
class Registration:
    """What a `vaccination.registered` says of the dose: its content. The same content
    again (whatever its event id, user or offset of the instant) changes nothing."""

    unit_id: str
    administered_at: datetime
    vaccine: Vaccine
    status: DoseStatus

    def __post_init__(self) -> None:
        if self.administered_at.tzinfo is None:
            raise ValueError("administered_at needs an offset")


@dataclass(frozen=True)
class Dose:
    """The stored record. `memberships` are the covering memberships as they were shown
    when this version was decided (views with codes and names)."""

    vaccination_id: str
    personnummer: str
    unit_id: str
    basis: Basis
    status: DoseStatus
    prompt_id: str | None
    confirmed_at: datetime | None
    administered_at: datetime | None
    vaccine: Vaccine | None
    actor: Actor | None
    memberships: tuple[dict[str, Any], ...]
    version: int
    command_id: str | None
    updated_at: datetime

    @property
    def missing_group(self) -> bool:
        """No group applied to a dose that was given: it cannot be reimbursed yet. A dose
        entered in error was never given, so no group is missing."""
        return self.status is DoseStatus.COMPLETED and not self.memberships

    def day(self, zone: tzinfo) -> date:
        """The day of the dose: of `administered_at` once registered, else of the close."""
        when = self.administered_at if self.basis is Basis.REGISTRATION else self.confirmed_at
        assert when is not None, "a dose is registered or its popup closed"
        return day_of(when, zone)

    def registration(self) -> Registration | None:
        if self.basis is not Basis.REGISTRATION:
            return None
        assert self.administered_at is not None and self.vaccine is not None
        return Registration(self.unit_id, self.administered_at, self.vaccine, self.status)

    def registered(self, registration: Registration) -> Dose:
        """The record once `registration` is known (groups still to be decided)."""
        return replace(
            self,
            basis=Basis.REGISTRATION,
            unit_id=registration.unit_id,
            administered_at=registration.administered_at,
            vaccine=registration.vaccine,
            status=registration.status,
        )


def day_of(instant: datetime, zone: tzinfo) -> date:
    """The calendar day in `zone` of an instant (with offset)."""
    if instant.tzinfo is None:
        raise ValueError("an instant needs an offset")
    return instant.astimezone(zone).date()


def covers(membership: Membership, day: date) -> bool:
    """The membership applied on `day`: inclusive period, open end, not entered in error."""
    if membership.status == MembershipStatus.ENTERED_IN_ERROR:
        return False
    return membership.valid_from <= day and (
        membership.valid_to is None or day <= membership.valid_to
    )


def covering(memberships: Iterable[Membership], dose: Dose, zone: tzinfo) -> list[Membership]:
    """The memberships that decide the dose's groups, in the customer's order; none for
    a dose entered in error."""
    if dose.status is DoseStatus.ENTERED_IN_ERROR:
        return []
    day = dose.day(zone)
    return [m for m in memberships if covers(m, day)]


# What names a dose's group: the export's `groups` carry these (names follow the codes).
_GROUP_FIELDS: Final = ("membership_id", "group_code", "subgroup_code", "reference_code")


def same_groups(shown: Iterable[dict[str, Any]], current: Iterable[dict[str, Any]]) -> bool:
    """Whether two lists of membership views name the same groups: the same memberships
    with the same codes, in any order. Anything else of a membership (its end after the
    dose, its version) does not change which groups the dose was given under."""

    def key(views: Iterable[dict[str, Any]]) -> list[tuple[tuple[bool, str], ...]]:
        return sorted(
            tuple((v.get(name) is None, str(v.get(name) or "")) for name in _GROUP_FIELDS)
            for v in views
        )

    return key(shown) == key(current)
