from __future__ import annotations

import json
import logging

from services.common.logs import JsonFormatter, redact_personnummer


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
