"""Wire models of the inbound `data` payloads (CONTRACT.md, "Data").

Unknown extra fields are ignored (forward compatibility); a missing required field
or a wrong type is a schema error. Lengths are bounded so an oversize value is
rejected here, before it reaches the database.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# No control characters (PostgreSQL text cannot even hold NUL): rejected here, clearly.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
Name = Annotated[str, StringConstraints(max_length=200, pattern=_PRINTABLE)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
# Validated by the domain's Personnummer; bounded here only against oversize input.
PersonnummerText = Annotated[str, StringConstraints(max_length=32)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)


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


class BookingUpsert(Payload):
    booking_id: Id
    unit_id: Id
    start_time: AwareDatetime
    customer: BookingCustomer
    vaccine: BookingVaccine | None = None
    requested_group: RequestedGroup | None = None


class BookingCancelled(Payload):
    booking_id: Id
    unit_id: Id


class StartedVaccine(Payload):
    code: Code
    name: Name


class VaccinationStarted(Payload):
    vaccination_id: Id
    unit_id: Id
    user_id: Id
    personnummer: PersonnummerText
    booking_id: Id | None = None
    vaccine: StartedVaccine | None = None


class Actor(Payload):
    user_id: Id
    unit_id: Id


class Command(Payload):
    personnummer: PersonnummerText
    actor: Actor


class AddGroup(Command):
    group_code: Code
    subgroup_code: Code | None = None
    # Longer reference codes are a business-rule rejection (INVALID_COMMAND) made by
    # the domain, so they get a clear message rather than a schema error.
    reference_code: Annotated[str, StringConstraints(max_length=4096)] | None = None
    valid_from: date | None = None
    prompt_id: Id | None = None


class UpdateGroup(Command):
    membership_id: Id
    subgroup_code: Code | None = None
    reference_code: Annotated[str, StringConstraints(max_length=4096)] | None = None


class RemoveGroup(Command):
    membership_id: Id
    valid_to: date | None = None


class ClosePrompt(Command):
    prompt_id: Id
    vaccination_id: Id


__all__ = [
    "AddGroup",
    "BookingCancelled",
    "BookingUpsert",
    "ClosePrompt",
    "RemoveGroup",
    "UpdateGroup",
    "VaccinationStarted",
]
