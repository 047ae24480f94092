"""Typed views of what the client sends and what the service answers.

Parsing follows the contract's compatibility rule: unknown fields are ignored, and
every parsed object keeps the `Event` it came from for anything not modelled here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from customer_groups_client.envelope import Event

PROMPT = "customer_group.prompt"
ADDED = "customer_group.added"
UPDATED = "customer_group.updated"
REMOVED = "customer_group.removed"
REJECTED = "customer_group.command_rejected"
CONFIRMED = "customer_group.vaccination_groups_confirmed"
CATALOG_GROUP = "customer_group.catalog_group"


@dataclass(frozen=True)
class Actor:
    """Who acts: the nurse's user id (HSA-id) and the unit they act for."""

    user_id: str
    unit_id: str

    def to_data(self) -> dict[str, str]:
        return {"user_id": self.user_id, "unit_id": self.unit_id}

    @classmethod
    def from_data(cls, data: Any) -> Actor | None:
        if not isinstance(data, dict):
            return None
        return cls(str(data["user_id"]), str(data["unit_id"]))


@dataclass(frozen=True)
class Vaccine:
    """A vaccine by ATC code and name; `dose` is the booking's `dose` and the
    registration's `dose_number` (a start carries neither)."""

    code: str
    name: str
    dose: int | None = None


@dataclass(frozen=True)
class RequestedGroup:
    """The group the patient chose when booking online."""

    group_code: str
    subgroup_code: str | None = None


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else None


def _instant(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Membership:
    """A customer's membership of a group (periods inclusive: `valid_to` is the last day
    the group applied; null while active)."""

    membership_id: str
    group_code: str
    group_name: str
    subgroup_code: str | None
    subgroup_name: str | None
    reference_code: str | None
    valid_from: date
    valid_to: date | None
    status: str  # active | historical | entered_in_error
    version: int
    created_at: datetime | None
    created_by: Actor | None
    updated_by: Actor | None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Membership:
        valid_from = _date(data["valid_from"])
        if valid_from is None:
            raise ValueError("membership without valid_from")
        return cls(
            membership_id=str(data["membership_id"]),
            group_code=str(data["group_code"]),
            group_name=str(data.get("group_name") or data["group_code"]),
            subgroup_code=_text(data.get("subgroup_code")),
            subgroup_name=_text(data.get("subgroup_name")),
            reference_code=_text(data.get("reference_code")),
            valid_from=valid_from,
            valid_to=_date(data.get("valid_to")),
            status=str(data["status"]),
            version=int(data["version"]),
            created_at=_instant(data.get("created_at")),
            created_by=Actor.from_data(data.get("created_by")),
            updated_by=Actor.from_data(data.get("updated_by")),
        )


@dataclass(frozen=True)
class Subgroup:
    subgroup_code: str
    name: str
    valid_from: date | None = None  # in the catalog feed; the prompt lists today's only
    valid_to: date | None = None


@dataclass(frozen=True)
class Group:
    """A group selectable in the popup (a prompt's `catalog`), or a catalog feed entry
    (then with its validity and `catalog_version`)."""

    group_code: str
    name: str
    subgroups: tuple[Subgroup, ...]
    valid_from: date | None = None
    valid_to: date | None = None
    catalog_version: str | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Group:
        return cls(
            group_code=str(data["group_code"]),
            name=str(data["name"]),
            subgroups=tuple(
                Subgroup(
                    str(s["subgroup_code"]),
                    str(s["name"]),
                    _date(s.get("valid_from")),
                    _date(s.get("valid_to")),
                )
                for s in data.get("subgroups") or ()
            ),
            valid_from=_date(data.get("valid_from")),
            valid_to=_date(data.get("valid_to")),
            catalog_version=_text(data.get("catalog_version")),
        )


@dataclass(frozen=True)
class Suggestion:
    group_code: str
    subgroup_code: str | None
    reason: str  # REQUESTED_AT_BOOKING | CATALOG_RULE


@dataclass(frozen=True)
class Prompt:
    """What the popup shows for one vaccination (`customer_group.prompt`)."""

    prompt_id: str
    vaccination_id: str
    unit_id: str
    user_id: str
    personnummer: str
    active: tuple[Membership, ...]
    historical: tuple[Membership, ...]  # at most the 50 most recently ended
    historical_total: int
    catalog: tuple[Group, ...]  # groups selectable today
    suggestions: tuple[Suggestion, ...]
    required: bool  # the customer has no active group
    event: Event

    @classmethod
    def from_event(cls, event: Event) -> Prompt:
        data = event.data
        historical = tuple(Membership.from_data(m) for m in data.get("historical") or ())
        return cls(
            prompt_id=str(data["prompt_id"]),
            vaccination_id=str(data["vaccination_id"]),
            unit_id=str(data["unit_id"]),
            user_id=str(data["user_id"]),
            personnummer=str(data["personnummer"]),
            active=tuple(Membership.from_data(m) for m in data.get("active") or ()),
            historical=historical,
            historical_total=int(data.get("historical_total", len(historical))),
            catalog=tuple(Group.from_data(g) for g in data.get("catalog") or ()),
            suggestions=tuple(
                Suggestion(str(s["group_code"]), _text(s.get("subgroup_code")), str(s["reason"]))
                for s in data.get("suggestions") or ()
            ),
            required=bool(data.get("required")),
            event=event,
        )


@dataclass(frozen=True)
class Confirmation:
    """The dose-level record (`customer_group.vaccination_groups_confirmed`): the groups
    whose period covers the day of the dose."""

    vaccination_id: str
    prompt_id: str | None
    unit_id: str
    basis: str  # popup | registration
    status: str  # completed | entered_in_error
    confirmed_at: datetime | None
    administered_at: datetime | None
    vaccine: dict[str, Any] | None
    memberships: tuple[Membership, ...]
    missing_group: bool
    version: int

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Confirmation:
        vaccine = data.get("vaccine")
        return cls(
            vaccination_id=str(data["vaccination_id"]),
            prompt_id=_text(data.get("prompt_id")),
            unit_id=str(data["unit_id"]),
            basis=str(data["basis"]),
            status=str(data.get("status") or "completed"),
            confirmed_at=_instant(data.get("confirmed_at")),
            administered_at=_instant(data.get("administered_at")),
            vaccine=vaccine if isinstance(vaccine, dict) else None,
            memberships=tuple(Membership.from_data(m) for m in data.get("memberships") or ()),
            missing_group=bool(data.get("missing_group")),
            version=int(data["version"]),
        )


@dataclass(frozen=True)
class Rejection:
    """Why the service refused a command, start or registration."""

    reason_code: str  # INVALID_COMMAND, ALREADY_ACTIVE, UNAUTHORIZED, ... (the contract)
    message: str


class CommandRejected(Exception):
    """Raised by `Outcome.raise_for_rejection()` and for a refused start."""

    def __init__(self, command_id: str, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason_code}: {rejection.message}")
        self.command_id = command_id
        self.rejection = rejection

    @property
    def reason_code(self) -> str:
        return self.rejection.reason_code


class OutcomeTimeout(TimeoutError):
    """No answer in time. The command may still be applied later: send it again with
    the same id (never a new one), or wait longer."""

    def __init__(self, what: str, waited: float) -> None:
        super().__init__(f"no answer to {what} within {waited:g} s")
        self.what = what
        self.waited = waited


@dataclass(frozen=True)
class Outcome:
    """The event that answered a command (or a registration): its `data.command_id` is
    the command's CloudEvent id. Exactly one of `rejection`, `membership` (added,
    updated, removed) and `confirmation` (prompt_close, registration) is set."""

    command_id: str
    event: Event
    rejection: Rejection | None = None
    membership: Membership | None = None
    previous: Membership | None = None  # customer_group.updated: before the change
    confirmation: Confirmation | None = None

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def accepted(self) -> bool:
        return self.rejection is None

    def raise_for_rejection(self) -> Outcome:
        if self.rejection is not None:
            raise CommandRejected(self.command_id, self.rejection)
        return self

    @classmethod
    def from_event(cls, event: Event) -> Outcome | None:
        """The outcome this event carries, or None for one that answers no command (a
        prompt, a re-confirmation or retirement by the service: `command_id` null)."""
        command_id = event.command_id
        if command_id is None:
            return None
        data = event.data
        if event.type == REJECTED:
            rejection = Rejection(str(data["reason_code"]), str(data.get("message") or ""))
            return cls(command_id, event, rejection=rejection)
        if event.type == CONFIRMED:
            return cls(command_id, event, confirmation=Confirmation.from_data(data))
        membership = data.get("membership")
        previous = data.get("previous")
        return cls(
            command_id,
            event,
            membership=Membership.from_data(membership) if isinstance(membership, dict) else None,
            previous=Membership.from_data(previous) if isinstance(previous, dict) else None,
        )


def version_key(version: str) -> tuple[tuple[int, ...], ...]:
    """Catalog versions are dot-separated numbers and dates, compared part by part as
    numbers (`2026-11-26.10` after `2026-11-26.9`); ValueError for anything else."""
    return tuple(tuple(int(n) for n in part.split("-")) for part in version.split("."))


@dataclass(frozen=True)
class Catalog:
    """The groups of the catalog feed (or `GET /catalog`), retired ones included, so
    codes in old records always resolve."""

    version: str
    groups: tuple[Group, ...]

    def group(self, group_code: str) -> Group | None:
        return next((g for g in self.groups if g.group_code == group_code), None)
