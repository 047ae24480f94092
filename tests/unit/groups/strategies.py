"""Hypothesis strategies and an independent oracle for personnummer tests."""

from __future__ import annotations

from datetime import date

from hypothesis import strategies as st


def oracle_luhn_check_digit(nine: str) -> str:
    """Check digit computed the textbook way (weights 2,1,2,1,... from the left).

    Deliberately a different implementation from the production `luhn_ok`.
    """
    total = 0
    for i, ch in enumerate(nine):
        product = int(ch) * (2 if i % 2 == 0 else 1)
        total += product // 10 + product % 10
    return str((10 - total % 10) % 10)


def oracle_is_valid(text: str) -> bool:
    """Independent statement of the contract's rule, for differential tests."""
    if len(text) != 12 or any(ch not in "0123456789" for ch in text):
        return False
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    if day > 60:
        day -= 60
    if year < 1850:
        return False
    try:
        date(year, month, day)
    except ValueError:
        return False
    return oracle_luhn_check_digit(text[2:11]) == text[11]


def build(born: date, serial: int, coordination: bool = False) -> str:
    day = born.day + (60 if coordination else 0)
    body = f"{born.year:04d}{born.month:02d}{day:02d}{serial:03d}"
    return body + oracle_luhn_check_digit(body[2:])


birth_dates = st.dates(min_value=date(1850, 1, 1), max_value=date(2099, 12, 31))
serials = st.integers(min_value=0, max_value=999)


@st.composite
def valid_personnummer(draw: st.DrawFn, coordination: bool | None = None) -> str:
    """12-digit valid numbers; samordningsnummer too unless told otherwise."""
    coord = draw(st.booleans()) if coordination is None else coordination
    return build(draw(birth_dates), draw(serials), coord)
