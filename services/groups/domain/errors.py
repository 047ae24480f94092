"""Business-rule violations, one class per contract reason code.

The service layer turns a `DomainError` into `customer_group.command_rejected`
with `reason_code` and `message`. Messages end up in events, logs and the
warehouse, so they must never carry a personnummer: the constructor redacts
anything that looks like one as a safety net, and raise sites never echo a
personnummer or a free-text reference code in the first place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

# Ten or more digits, optionally split by single separators: covers the 12-digit
# form, the 10-digit form and "YYMMDD-NNNC" / "YYYYMMDD-NNNC" / "YYMMDD+NNNC".
_PERSONNUMMER_LIKE = re.compile(r"\d(?:[-+ ]?\d){9,}")
_REDACTED = "<redacted>"
_MAX_ECHO = 64


def redact(text: str) -> str:
    """Replace every personnummer-like digit run in `text` by `<redacted>`."""
    return _PERSONNUMMER_LIKE.sub(_REDACTED, text)


def show(value: object) -> str:
    """Quote a client-supplied value for a message: redacted and truncated.

    Used for codes and ids that help the client see what was wrong; never for
    the personnummer or the reference code.
    """
    text = redact(str(value))
    if len(text) > _MAX_ECHO:
        text = text[:_MAX_ECHO] + "…"
    return repr(text)


class DomainError(Exception):
    """A command broke a business rule; `reason_code` is the contract's code."""

    reason_code: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("reason_code"), str):
            raise TypeError(f"{cls.__name__} must define a reason_code")

    def __init__(self, message: str) -> None:
        self.message = redact(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InvalidPersonnummer(DomainError):
    reason_code = "INVALID_PERSONNUMMER"


class InvalidCommand(DomainError):
    reason_code = "INVALID_COMMAND"


class UnknownGroup(DomainError):
    reason_code = "UNKNOWN_GROUP"


class UnknownSubgroup(DomainError):
    reason_code = "UNKNOWN_SUBGROUP"


class GroupNotSelectable(DomainError):
    """The group or subgroup exists but is outside its validity on that day."""

    reason_code = "GROUP_NOT_SELECTABLE"


class AlreadyActive(DomainError):
    reason_code = "ALREADY_ACTIVE"


class MembershipNotFound(DomainError):
    reason_code = "MEMBERSHIP_NOT_FOUND"


class AlreadyHistorical(DomainError):
    reason_code = "ALREADY_HISTORICAL"


class InvalidPeriod(DomainError):
    reason_code = "INVALID_PERIOD"


class PromptNotFound(DomainError):
    """Raised by the service layer: prompts are not part of the aggregate."""

    reason_code = "PROMPT_NOT_FOUND"


class Unauthorized(DomainError):
    """Raised by the service layer: the actor's unit may not send commands."""

    reason_code = "UNAUTHORIZED"


ERRORS_BY_REASON: Mapping[str, type[DomainError]] = {
    cls.reason_code: cls
    for cls in (
        InvalidPersonnummer,
        InvalidCommand,
        UnknownGroup,
        UnknownSubgroup,
        GroupNotSelectable,
        AlreadyActive,
        MembershipNotFound,
        AlreadyHistorical,
        InvalidPeriod,
        PromptNotFound,
        Unauthorized,
    )
}
"""Every contract reason code, in the contract's order."""
