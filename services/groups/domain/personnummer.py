"""The customer's identity: a Swedish personnummer in the contract's 12-digit form.

The number is sensitive, so the value object never shows it in `repr`/`str`
(accidental logging is safe) and validation errors never echo the input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from services.groups.domain.errors import DomainError, InvalidPersonnummer

LENGTH: Final = 12
MIN_YEAR: Final = 1850
"""Older birth years cannot belong to a living customer; they are typos."""
COORDINATION_OFFSET: Final = 60
"""A samordningsnummer is a personnummer whose day of month is increased by 60."""


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit alone accepts "١" or "²"; the contract means 0-9 only.
    return text.isascii() and text.isdigit()


def luhn_ok(digits: str) -> bool:
    """True when `digits` (ASCII 0-9, check digit last) passes the Luhn check.

    For a personnummer pass the last 10 digits (YYMMDDNNNC); the century is not
    covered by the check digit.
    """
    if not digits or not _is_ascii_digits(digits):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        n = int(char)
        if position % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def luhn_check_digit(body: str) -> str:
    """The digit that makes `body + digit` pass `luhn_ok` (for building test data)."""
    if not body or not _is_ascii_digits(body):
        raise ValueError("body must be ASCII digits")
    for candidate in "0123456789":
        if luhn_ok(body + candidate):
            return candidate
    raise AssertionError("unreachable: exactly one Luhn digit always exists")  # pragma: no cover


def _birth_date(digits: str) -> tuple[date, bool]:
    """Birth date and whether `digits` (12 ASCII digits) is a samordningsnummer."""
    year, month, day = int(digits[0:4]), int(digits[4:6]), int(digits[6:8])
    if year < MIN_YEAR:
        raise InvalidPersonnummer(f"Personnummer birth year must be {MIN_YEAR} or later")
    coordination = day > COORDINATION_OFFSET
    if coordination:
        day -= COORDINATION_OFFSET
    try:
        return date(year, month, day), coordination
    except ValueError:
        raise InvalidPersonnummer(
            "Personnummer does not contain a real calendar date (YYYYMMDD, "
            "or day + 60 for a samordningsnummer)"
        ) from None


@dataclass(frozen=True, slots=True, repr=False)
class Personnummer:
    """A validated personnummer or samordningsnummer, `YYYYMMDDNNNC`.

    Construct with `Personnummer.parse(text)`; direct construction validates too.
    Equality and hashing use the digits, so it can key dictionaries.
    """

    value: str

    def __post_init__(self) -> None:
        text = self.value
        if not isinstance(text, str) or len(text) != LENGTH or not _is_ascii_digits(text):
            raise InvalidPersonnummer(
                "Personnummer must be exactly 12 ASCII digits, YYYYMMDDNNNC, "
                "without separator or spaces"
            )
        _birth_date(text)
        if not luhn_ok(text[2:]):
            raise InvalidPersonnummer("Personnummer check digit is wrong")

    @classmethod
    def parse(cls, text: str) -> Personnummer:
        """Validate `text` strictly: format, real date (year >= 1850), Luhn digit."""
        if not isinstance(text, str):
            return cls(text)  # raises InvalidPersonnummer
        return _parsed(text)

    @property
    def birth_date(self) -> date:
        """The real birth date (for a samordningsnummer: day - 60)."""
        return _birth_date(self.value)[0]

    @property
    def is_coordination_number(self) -> bool:
        """True for a samordningsnummer (day of month + 60)."""
        return _birth_date(self.value)[1]

    def age_on(self, day: date) -> int:
        """Age in completed years on `day`.

        Someone born on 29 February turns a year older on 1 March in common
        years. A `day` before the birth date is a caller bug: ValueError.
        """
        born = self.birth_date
        if day < born:
            raise ValueError("day is before the birth date")
        return day.year - born.year - ((day.month, day.day) < (born.month, born.day))

    def __repr__(self) -> str:
        return "Personnummer(<redacted>)"

    def __str__(self) -> str:
        return "<redacted personnummer>"


# Cached (valid values only, bounded): a record meets the parser several times per batch
# and validation is a visible share of CPU (BENCHMARKS.md, fix 4).
@functools.lru_cache(maxsize=8_192)
def _parsed(text: str) -> Personnummer:
    return Personnummer(text)


# 12 digits (YYYYMMDDNNNC) or 10 (YYMMDDNNNC), with or without the usual separator.
_EMBEDDED = re.compile(r"(?<!\d)(\d{8}|\d{6})[-+ ]?(\d{4})(?!\d)")


def contains_personnummer(text: str) -> bool:
    """True when `text` holds a valid personnummer or samordningsnummer anywhere, in the
    12- or 10-digit form, so free text cannot carry an identity past pseudonymisation."""
    for match in _EMBEDDED.finditer(text):
        digits = match.group(1) + match.group(2)
        for candidate in (digits,) if len(digits) == LENGTH else ("19" + digits, "20" + digits):
            try:
                Personnummer.parse(candidate)
            except DomainError:
                continue
            return True
    return False
