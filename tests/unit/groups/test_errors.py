from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.groups.domain import errors
from services.groups.domain.errors import ERRORS_BY_REASON, DomainError, redact, show
from tests.unit.groups.strategies import valid_personnummer

CONTRACT_REASON_CODES = [
    "INVALID_PERSONNUMMER",
    "INVALID_COMMAND",
    "UNKNOWN_GROUP",
    "UNKNOWN_SUBGROUP",
    "GROUP_NOT_SELECTABLE",
    "ALREADY_ACTIVE",
    "MEMBERSHIP_NOT_FOUND",
    "ALREADY_HISTORICAL",
    "INVALID_PERIOD",
    "PROMPT_NOT_FOUND",
    "UNAUTHORIZED",
]

CLASS_NAMES = {
    "INVALID_PERSONNUMMER": "InvalidPersonnummer",
    "INVALID_COMMAND": "InvalidCommand",
    "UNKNOWN_GROUP": "UnknownGroup",
    "UNKNOWN_SUBGROUP": "UnknownSubgroup",
    "GROUP_NOT_SELECTABLE": "GroupNotSelectable",
    "ALREADY_ACTIVE": "AlreadyActive",
    "MEMBERSHIP_NOT_FOUND": "MembershipNotFound",
    "ALREADY_HISTORICAL": "AlreadyHistorical",
    "INVALID_PERIOD": "InvalidPeriod",
    "PROMPT_NOT_FOUND": "PromptNotFound",
    "UNAUTHORIZED": "Unauthorized",
}


def test_one_class_per_contract_reason_code() -> None:
    assert list(ERRORS_BY_REASON) == CONTRACT_REASON_CODES
    for code, name in CLASS_NAMES.items():
        cls = getattr(errors, name)
        assert issubclass(cls, DomainError)
        assert cls.reason_code == code
        assert ERRORS_BY_REASON[code] is cls


@pytest.mark.parametrize("cls", list(ERRORS_BY_REASON.values()))
def test_message_and_str(cls: type[DomainError]) -> None:
    exc = cls("Something is wrong")
    assert exc.message == "Something is wrong"
    assert str(exc) == "Something is wrong"
    assert isinstance(exc, Exception)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is cls
    assert again.message == exc.message


def test_subclass_without_reason_code_is_a_bug() -> None:
    with pytest.raises(TypeError):

        class Broken(DomainError):
            pass


@pytest.mark.parametrize(
    "text",
    ["191212121212", "1912121212", "19121212-1212", "121212-1212", "121212+1212", "1912 1212 1212"],
)
def test_personnummer_forms_are_redacted(text: str) -> None:
    message = errors.UnknownGroup(f"Unknown group {text!r}").message
    assert "<redacted>" in message
    assert "1212" not in message


def test_dates_and_short_numbers_survive_redaction() -> None:
    text = "valid_to 2024-03-18 is before valid_from 2024-03-20; at most 64 characters"
    assert redact(text) == text


@given(valid_personnummer(), st.text(max_size=20), st.text(max_size=20))
def test_a_personnummer_never_survives_in_a_message(pnr: str, before: str, after: str) -> None:
    message = errors.InvalidCommand(before + " " + pnr + " " + after).message
    assert pnr not in message
    assert pnr[2:] not in message


def test_show_truncates_long_values() -> None:
    shown = show("A" * 500)
    assert len(shown) < 80
    assert shown.startswith("'AAAA")
