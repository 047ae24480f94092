"""Test-side oracle for personal data: the written forms of a personnummer to scan for."""

from __future__ import annotations

from collections.abc import Iterable


def personnummer_forms(numbers: Iterable[str]) -> set[bytes]:
    """Every way a 12-digit personnummer could leak: 12 and 10 digits, with `-` or `+`."""
    forms: set[str] = set()
    for pnr in numbers:
        short = pnr[2:]
        forms |= {
            pnr,
            short,
            f"{pnr[:8]}-{pnr[8:]}",
            f"{short[:6]}-{short[6:]}",
            f"{short[:6]}+{short[6:]}",
        }
    return {form.encode() for form in forms}
