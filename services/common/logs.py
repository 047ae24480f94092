"""Structured JSON logs with a last-line defence against personnummer.

Code never logs a personnummer on purpose (log ids such as vaccination_id or
command_id instead); the filter below masks any 10- or 12-digit run that passes the
Luhn check, in case a library or an exception message carries one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_DIGIT_RUN = re.compile(r"(?<!\d)(\d{6}|\d{8})[-+]?(\d{4})(?!\d)")


def _luhn_ok(ten_digits: str) -> bool:
    total = 0
    for index, char in enumerate(ten_digits):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def redact_personnummer(text: str) -> str:
    """Replace every Luhn-valid 10/12-digit (optionally hyphenated) number by a mask."""

    def mask(match: re.Match[str]) -> str:
        digits = match.group(1) + match.group(2)
        if _luhn_ok(digits[-10:]):
            return "<personnummer>"
        return match.group(0)

    return _DIGIT_RUN.sub(mask, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key.startswith("ctx_"):
                payload[key[4:]] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact_personnummer(json.dumps(payload, ensure_ascii=False, default=str))


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
