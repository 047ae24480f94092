from __future__ import annotations

import json
import logging
import sys

from services.common.logs import JsonFormatter, redact_personnummer, scrubbed_traceback


def test_luhn_valid_numbers_are_masked_in_every_form() -> None:
    for text in ("191212121212", "121212-1212", "19121212-1212", "1212121212"):
        assert redact_personnummer(f"id {text} x") == "id <personnummer> x"


def test_other_numbers_are_kept() -> None:
    assert redact_personnummer("offset 191212121213 and 42") == "offset 191212121213 and 42"


def test_formatter_masks_messages_and_exceptions() -> None:
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "patient %s", ("191212121212",), None
    )
    line = JsonFormatter().format(record)
    assert "191212121212" not in line
    assert json.loads(line)["msg"] == "patient <personnummer>"


# Built apart from the raise lines, which the stack shows as source code.
NAME, CODE = "Anna " + "Andersson", "REF-" + "4711"


def _raise_chained() -> None:
    try:
        raise KeyError(f"{NAME}, {CODE}")
    except KeyError as inner:
        raise RuntimeError(f"failed for {NAME}") from inner


def test_exception_messages_are_withheld_but_types_and_stacks_kept() -> None:
    try:
        _raise_chained()
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "batch failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    exc = json.loads(line)["exc"]
    assert "Anna" not in line and "REF-4711" not in line
    assert "builtins.KeyError: <message withheld>" in exc
    assert "builtins.RuntimeError: <message withheld>" in exc
    assert exc.index("KeyError") < exc.index("RuntimeError"), "cause first, as Python prints"
    assert "_raise_chained" in exc, "the stack is kept"


def test_the_sqlstate_of_a_database_error_is_kept() -> None:
    class FakeDriverError(Exception):
        sqlstate = "23505"

    try:
        raise FakeDriverError(f"Key (last_name)=({NAME}) already exists")
    except FakeDriverError as error:
        text = scrubbed_traceback(error)
    assert "Anna" not in text
    assert "(SQLSTATE 23505): <message withheld>" in text
