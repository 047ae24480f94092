"""The inbound messages, typed: each CloudEvent `data` payload (CONTRACT.md, "Data") as
a pydantic model, validated once when the record is decoded (see `messagebus`).

Each message names its subjects (the customer and booking it concerns: records that
share one are applied in order) and the keys a batch preloads for it. A payload that
breaks its schema becomes `Invalid`, which keeps only what the refusal needs.

Unknown extra fields are ignored (forward compatibility); a missing required field
or a wrong type is a schema error. Lengths are bounded so an oversize value is
rejected here, before it reaches the database. Personal data stays out of `repr`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from services.common.db import postgres_can_store
from services.groups.domain.ids import is_canonical_uuid

# No control characters (PostgreSQL text cannot even hold NUL): rejected here, clearly.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
Name = Annotated[str, StringConstraints(max_length=200, pattern=_PRINTABLE)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
# Validated by the domain's Personnummer; bounded here only against oversize input.
PersonnummerText = Annotated[str, StringConstraints(max_length=32)]
# Longer reference codes are a business-rule rejection (INVALID_COMMAND) made by
# the domain, so they get a clear message rather than a schema error.
ReferenceText = Annotated[str, StringConstraints(max_length=4096)]
# Never in a repr (so never in a log line or a traceback's locals).
_PERSONAL = frozenset({"personnummer", "first_name", "last_name", "reference_code"})


@dataclass
class PreloadKeys:
    """What a batch reads, named up front so it is loaded in one statement."""

    personnummer: list[str] = field(default_factory=list)
    booking_ids: list[str] = field(default_factory=list)
    vaccination_ids: list[str] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    # Customers whose dose records are read: a membership change may re-decide them.
    dose_customers: list[str] = field(default_factory=list)


def _customer_subject(personnummer: str) -> tuple[str, ...]:
    return (personnummer[:32],)


def _loadable_personnummer(text: str) -> list[str]:
    return [text] if len(text) == 12 and text.isdigit() else []


def _loadable(text: str | None) -> list[str]:
    # Text PostgreSQL cannot take fails later, and must not fail the batch's reads here.
    if text is None or len(text) > 128 or not postgres_can_store(text):
        return []
    return [text]


def _canonical_uuid(text: str | None) -> list[str]:
    return [text] if text is not None and is_canonical_uuid(text) else []


def _raw(data: Any, *path: str) -> Any:
    for name in path:
        data = data.get(name) if isinstance(data, dict) else None
    return data


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, ("<redacted>" if name in _PERSONAL else value)


class Message(Payload):
    """One inbound message type."""

    # Where the payload names the unit acting, checked before anything else (even a
    # schema error) for starts and commands; None: the message has no unit check.
    UNIT_AT: ClassVar[tuple[str, ...] | None] = None

    def subjects(self) -> tuple[str, ...]:
        raise NotImplementedError

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        raise NotImplementedError

    @classmethod
    def subjects_in(cls, data: Any) -> tuple[str, ...]:
        """Best effort, for a payload that breaks the schema: still ordered with its
        customer's other records."""
        value = _raw(data, "personnummer")
        if value is None:
            value = _raw(data, "customer", "personnummer")
        return _customer_subject(value) if isinstance(value, str) else ()


class BookingCustomer(Payload):
    personnummer: PersonnummerText
    first_name: Name | None = None
    last_name: Name | None = None


class BookingVaccine(Payload):
    code: Code
    name: Name
    dose: Annotated[int, Field(ge=1, le=100)] | None = None


class RequestedGroup(Payload):
    group_code: Code
    subgroup_code: Code | None = None


class BookingMessage(Message):
    """A booking event: its customer (when named) and the booking itself are its
    subjects, so a cancellation that names only the booking comes after its creation."""

    @classmethod
    def subjects_in(cls, data: Any) -> tuple[str, ...]:
        pnr = _raw(data, "customer", "personnummer")
        booking_id = _raw(data, "booking_id")
        return (
            *(_customer_subject(pnr) if isinstance(pnr, str) else ()),
            *((f"booking:{booking_id[:128]}",) if isinstance(booking_id, str) else ()),
        )


class BookingUpsert(BookingMessage):
    booking_id: Id
    unit_id: Id
    start_time: AwareDatetime
    customer: BookingCustomer
    vaccine: BookingVaccine | None = None
    requested_group: RequestedGroup | None = None

    def subjects(self) -> tuple[str, ...]:
        return (self.customer.personnummer, f"booking:{self.booking_id}")

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        keys.personnummer += _loadable_personnummer(self.customer.personnummer)
        keys.booking_ids.append(self.booking_id)


class BookingCancelled(BookingMessage):
    booking_id: Id
    unit_id: Id

    def subjects(self) -> tuple[str, ...]:
        return (f"booking:{self.booking_id}",)

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        keys.booking_ids.append(self.booking_id)


class StartedVaccine(Payload):
    code: Code
    name: Name


class VaccinationStarted(Message):
    UNIT_AT = ("unit_id",)

    vaccination_id: Id
    unit_id: Id
    user_id: Id
    personnummer: PersonnummerText
    booking_id: Id | None = None
    vaccine: StartedVaccine | None = None

    def subjects(self) -> tuple[str, ...]:
        return _customer_subject(self.personnummer)

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        keys.personnummer += _loadable_personnummer(self.personnummer)
        keys.booking_ids += _loadable(self.booking_id)
        keys.vaccination_ids.append(self.vaccination_id)


class RegisteredVaccine(Payload):
    code: Code
    name: Name
    dose_number: Annotated[int, Field(ge=1, le=100)] | None = None


class Actor(Payload):
    user_id: Id
    unit_id: Id


class VaccinationRegistered(Message):
    """A dose signed in the record (also one registered afterwards, with its real time)."""

    UNIT_AT = ("unit_id",)

    vaccination_id: Id
    unit_id: Id
    user_id: Id
    personnummer: PersonnummerText
    administered_at: AwareDatetime
    vaccine: RegisteredVaccine
    booking_id: Id | None = None
    # Absent or null: completed.
    status: Literal["completed", "entered_in_error"] | None = None

    @property
    def actor(self) -> Actor:
        """Who registered the dose, as a command names its actor."""
        return Actor(user_id=self.user_id, unit_id=self.unit_id)

    def subjects(self) -> tuple[str, ...]:
        return _customer_subject(self.personnummer)

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        keys.personnummer += _loadable_personnummer(self.personnummer)
        keys.vaccination_ids.append(self.vaccination_id)


class Command(Message):
    """A customer-group command: a schema violation or a broken rule is answered with
    `command_rejected`, never dead-lettered."""

    UNIT_AT = ("actor", "unit_id")

    personnummer: PersonnummerText
    actor: Actor

    def subjects(self) -> tuple[str, ...]:
        return _customer_subject(self.personnummer)

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        keys.personnummer += _loadable_personnummer(self.personnummer)
        keys.dose_customers += _loadable_personnummer(self.personnummer)


class AddGroup(Command):
    group_code: Code
    subgroup_code: Code | None = None
    reference_code: ReferenceText | None = None
    valid_from: date | None = None
    prompt_id: Id | None = None

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        super().add_preload_keys(keys)
        keys.prompt_ids += _canonical_uuid(self.prompt_id)


class UpdateGroup(Command):
    # Which fields were given matters (absent: unchanged, null: cleared): see
    # `model_fields_set`.
    membership_id: Id
    group_code: Code | None = None
    subgroup_code: Code | None = None
    reference_code: ReferenceText | None = None


class RemoveGroup(Command):
    membership_id: Id
    valid_to: date | None = None
    reason: Literal["ended", "entered_in_error"] | None = None  # null: ended


class ClosePrompt(Command):
    prompt_id: Id
    vaccination_id: Id

    def add_preload_keys(self, keys: PreloadKeys) -> None:
        super().add_preload_keys(keys)
        keys.vaccination_ids.append(self.vaccination_id)
        keys.prompt_ids += _canonical_uuid(self.prompt_id)


@dataclass(frozen=True)
class Invalid:
    """A payload of a known type that breaks its schema: what its refusal needs."""

    message_type: type[Message]
    problems: str  # which fields are wrong and why, never the values
    unit_id: str | None = field(repr=False)  # the unit it claims at `UNIT_AT`, if any
    personnummer: str | None = field(repr=False)  # text at `personnummer`, unchecked
    subjects: tuple[str, ...] = field(repr=False)

    @classmethod
    def of(cls, message_type: type[Message], data: Any, problems: str) -> Invalid:
        unit = _raw(data, *message_type.UNIT_AT) if message_type.UNIT_AT else None
        personnummer = _raw(data, "personnummer")
        return cls(
            message_type,
            problems,
            unit if isinstance(unit, str) else None,
            personnummer if isinstance(personnummer, str) else None,
            message_type.subjects_in(data),
        )


__all__ = [
    "AddGroup",
    "BookingCancelled",
    "BookingUpsert",
    "ClosePrompt",
    "Command",
    "Invalid",
    "Message",
    "RemoveGroup",
    "UpdateGroup",
    "VaccinationRegistered",
    "VaccinationStarted",
]
