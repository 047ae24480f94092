from __future__ import annotations

import copy
import pickle
from datetime import date

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from services.groups.domain.errors import InvalidPersonnummer
from services.groups.domain.personnummer import Personnummer, luhn_check_digit, luhn_ok
from tests.unit.groups.strategies import build, oracle_is_valid, valid_personnummer

TEST_IDENTITY = "191212121212"


# -- examples ------------------------------------------------------------------


def test_public_test_identity_is_valid() -> None:
    pnr = Personnummer.parse(TEST_IDENTITY)
    assert pnr.value == TEST_IDENTITY
    assert pnr.birth_date == date(1912, 12, 12)
    assert not pnr.is_coordination_number


def test_guide_shows_the_test_person_as_111_years() -> None:
    pnr = Personnummer.parse(TEST_IDENTITY)
    assert pnr.age_on(date(2024, 12, 11)) == 111
    assert pnr.age_on(date(2024, 12, 12)) == 112


def test_samordningsnummer_day_plus_60() -> None:
    text = build(date(1990, 5, 7), 123, coordination=True)
    assert text[6:8] == "67"
    pnr = Personnummer.parse(text)
    assert pnr.is_coordination_number
    assert pnr.birth_date == date(1990, 5, 7)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1912121212",  # 10 digits
        "19121212-1212",
        "191212-1212",
        " 191212121212",
        "191212121212 ",
        "191212121212\n",
        "1912121212 12",
        "19121212121a",
        "１９１２１２１２１２１２",  # fullwidth digits
        "١٩١٢١٢١٢١٢١٢",  # Arabic-Indic digits
        "19121212121²",
        "1912121212121",
    ],
)
def test_format_errors(text: str) -> None:
    with pytest.raises(InvalidPersonnummer, match="12 ASCII digits"):
        Personnummer.parse(text)


@pytest.mark.parametrize("value", [None, 191212121212, b"191212121212"])
def test_non_strings_are_format_errors(value: object) -> None:
    with pytest.raises(InvalidPersonnummer, match="12 ASCII digits"):
        Personnummer.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    ["19121312121", "19120230121", "19230229121", "19121200121", "19121232121", "19120292121"],
    ids=["month13", "feb30", "feb29-common-year", "day0", "day32", "coordination-feb32"],
)
def test_date_errors(body: str) -> None:
    text = body + luhn_check_digit(body[2:])
    with pytest.raises(InvalidPersonnummer, match="real calendar date"):
        Personnummer.parse(text)


def test_leap_day_is_a_real_date() -> None:
    body = "20000229123"
    assert Personnummer.parse(body + luhn_check_digit(body[2:])).birth_date == date(2000, 2, 29)


def test_years_before_1850_are_rejected() -> None:
    body = "18491212121"
    with pytest.raises(InvalidPersonnummer, match="1850"):
        Personnummer.parse(body + luhn_check_digit(body[2:]))
    body = "18500101121"
    assert Personnummer.parse(body + luhn_check_digit(body[2:])).birth_date == date(1850, 1, 1)


def test_check_digit_error() -> None:
    with pytest.raises(InvalidPersonnummer, match="check digit"):
        Personnummer.parse("191212121213")


def test_direct_construction_validates_too() -> None:
    with pytest.raises(InvalidPersonnummer):
        Personnummer("191212121213")


def test_value_object_semantics() -> None:
    a, b = Personnummer.parse(TEST_IDENTITY), Personnummer.parse(TEST_IDENTITY)
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert copy.deepcopy(a) == a
    assert pickle.loads(pickle.dumps(a)) == a
    with pytest.raises(AttributeError):
        a.value = "200001010000"  # type: ignore[misc]


def test_repr_and_str_are_redacted() -> None:
    pnr = Personnummer.parse(TEST_IDENTITY)
    for shown in (repr(pnr), str(pnr), f"{pnr}", f"{pnr!r}", repr([pnr]), repr({"k": pnr})):
        assert "1212" not in shown
    assert repr(pnr) == "Personnummer(<redacted>)"


def test_age_on() -> None:
    pnr = Personnummer.parse(build(date(1961, 11, 26), 1))
    assert pnr.age_on(date(2026, 11, 25)) == 64
    assert pnr.age_on(date(2026, 11, 26)) == 65
    assert pnr.age_on(date(1961, 11, 26)) == 0
    with pytest.raises(ValueError):
        pnr.age_on(date(1961, 11, 25))


def test_age_on_leap_day_birthday_counts_from_1_march() -> None:
    pnr = Personnummer.parse(build(date(1960, 2, 29), 1))
    assert pnr.age_on(date(2025, 2, 28)) == 64
    assert pnr.age_on(date(2025, 3, 1)) == 65
    assert pnr.age_on(date(2024, 2, 29)) == 64


def test_luhn_ok_examples() -> None:
    assert luhn_ok("1212121212")
    assert not luhn_ok("1212121213")
    assert luhn_ok("79927398713")  # the classic Luhn example
    assert not luhn_ok("")
    assert not luhn_ok("12a")
    assert not luhn_ok("١٢")
    assert luhn_ok("0")


def test_luhn_check_digit_rejects_non_digits() -> None:
    with pytest.raises(ValueError):
        luhn_check_digit("")
    with pytest.raises(ValueError):
        luhn_check_digit("12-3")


# -- properties ----------------------------------------------------------------


@given(valid_personnummer())
@example(TEST_IDENTITY)
def test_every_valid_number_parses_and_round_trips(text: str) -> None:
    pnr = Personnummer.parse(text)
    assert pnr.value == text
    assert Personnummer.parse(pnr.value) == pnr
    assert luhn_ok(text[2:])


@given(valid_personnummer(coordination=True))
def test_samordningsnummer_are_accepted(text: str) -> None:
    pnr = Personnummer.parse(text)
    assert pnr.is_coordination_number
    assert int(text[6:8]) - 60 == pnr.birth_date.day
    assert pnr.birth_date.strftime("%Y%m") == text[:6]


@given(valid_personnummer(coordination=False))
def test_birth_date_is_the_first_eight_digits(text: str) -> None:
    pnr = Personnummer.parse(text)
    assert not pnr.is_coordination_number
    assert pnr.birth_date.strftime("%Y%m%d") == text[:8]


@given(valid_personnummer(), st.integers(min_value=2, max_value=11), st.integers(1, 9))
def test_any_single_digit_change_in_the_checked_part_is_rejected(
    text: str, position: int, delta: int
) -> None:
    """Luhn detects every single-digit error in YYMMDDNNNC (a date error may come first)."""
    changed_digit = str((int(text[position]) + delta) % 10)
    changed = text[:position] + changed_digit + text[position + 1 :]
    assert changed != text
    assert not luhn_ok(changed[2:])
    with pytest.raises(InvalidPersonnummer):
        Personnummer.parse(changed)


@given(valid_personnummer(), st.integers(min_value=2, max_value=10))
def test_adjacent_transpositions_are_mostly_detected(text: str, position: int) -> None:
    """Luhn catches swapped neighbours except 0<->9; check our result agrees with the oracle."""
    swapped = text[:position] + text[position + 1] + text[position] + text[position + 2 :]
    assume(swapped != text)
    try:
        Personnummer.parse(swapped)
        accepted = True
    except InvalidPersonnummer:
        accepted = False
    assert accepted == oracle_is_valid(swapped)
    if {text[position], text[position + 1]} != {"0", "9"}:
        assert not accepted


@given(st.text())
def test_random_strings_are_rejected(text: str) -> None:
    assume(not oracle_is_valid(text))
    with pytest.raises(InvalidPersonnummer):
        Personnummer.parse(text)


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_random_12_digit_strings_agree_with_the_oracle(text: str) -> None:
    try:
        Personnummer.parse(text)
        accepted = True
    except InvalidPersonnummer:
        accepted = False
    assert accepted == oracle_is_valid(text)


@given(st.text(alphabet=st.characters(categories=["Nd"]), min_size=12, max_size=12))
def test_non_ascii_decimal_digits_are_rejected(text: str) -> None:
    assume(not text.isascii())
    with pytest.raises(InvalidPersonnummer, match="12 ASCII digits"):
        Personnummer.parse(text)


@given(valid_personnummer())
def test_repr_never_reveals_digits(text: str) -> None:
    pnr = Personnummer.parse(text)
    for shown in (repr(pnr), str(pnr), format(pnr)):
        assert not any(ch.isdigit() for ch in shown)


def _message(text: str) -> str:
    with pytest.raises(InvalidPersonnummer) as info:
        Personnummer.parse(text)
    return info.value.message


KNOWN_MESSAGES = {
    _message("x"),  # format
    _message("191213121212"),  # date
    _message("184912121212"),  # year
    _message("191212121213"),  # check digit
}


def test_there_are_four_distinct_input_independent_messages() -> None:
    assert len(KNOWN_MESSAGES) == 4
    for message in KNOWN_MESSAGES:
        assert "191212" not in message


def _bad_check_digit(text: str) -> str:
    return text[:-1] + str((int(text[-1]) + 1) % 10)


@given(
    st.one_of(
        st.text(),
        st.text("0123456789", min_size=12, max_size=12),
        valid_personnummer().map(_bad_check_digit),
    )
)
def test_error_messages_never_echo_the_input(text: str) -> None:
    """Every rejection uses one of four fixed messages, so the input cannot leak."""
    assume(not oracle_is_valid(text))
    assert _message(text) in KNOWN_MESSAGES


@given(valid_personnummer(), st.dates(min_value=date(1850, 1, 1), max_value=date(2200, 1, 1)))
def test_age_is_completed_years(text: str, day: date) -> None:
    pnr = Personnummer.parse(text)
    born = pnr.birth_date
    assume(day >= born)
    age = pnr.age_on(day)
    assert age >= 0

    # the birthday of year born.year + age has passed; the next has not
    def birthday(year: int) -> date:
        try:
            return born.replace(year=year)
        except ValueError:  # 29 February in a common year
            return date(year, 3, 1)

    assert birthday(born.year + age) <= day
    if born.year + age + 1 <= 9999:
        assert day < birthday(born.year + age + 1)
