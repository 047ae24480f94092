"""Structured JSON logs with a last-line defence against personal data.

Code never logs a personnummer on purpose (log ids such as vaccination_id or
command_id instead). Exception messages are never written (a driver's message may quote
a row's values: names, reference codes), only their types and stacks; and the filter
below masks any 10- or 12-digit run that passes the Luhn check, in case a library's
own message carries one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
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


def scrubbed_traceback(error: BaseException) -> str:
    """The chain of exceptions with their stacks and types (and SQLSTATE, where there is
    one), but without their messages."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    lines: list[str] = []
    for item in reversed(chain):
        if lines:
            lines.append("\nwhich led to:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.StackSummary.extract(traceback.walk_tb(item.__traceback__)).format())
        kind = type(item)
        sqlstate = getattr(item, "sqlstate", None) or getattr(
            getattr(item, "orig", None), "sqlstate", None
        )
        state = f" (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else ""
        lines.append(f"{kind.__module__}.{kind.__qualname__}{state}: <message withheld>\n")
    return "".join(lines).rstrip("\n")


class JsonFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return scrubbed_traceback(ei[1]) if ei and ei[1] is not None else ""

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


class RepeatFilter(logging.Filter):
    """At most one record per kind and `interval` seconds from the loggers under
    `prefixes`; the one let through counts those held back since the last (`suppressed`).

    aiokafka logs an error on every attempt to reach a broker that is down, several a
    second per client for as long as the outage lasts; the first line and one every
    `interval` say as much. A kind is the logger, the level and the message template
    (not its arguments).
    """

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka",),
        *,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 256,
    ) -> None:
        super().__init__()
        self._names = prefixes
        self._children = tuple(f"{name}." for name in prefixes)
        self._interval = interval
        self._clock = clock
        self._max_kinds = max_kinds
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [last, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name in self._names or record.name.startswith(self._children)):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self._interval:
            seen[1] += 1
            return False
        if seen is None and len(self._kinds) >= self._max_kinds:
            self._kinds.clear()  # bounded memory if a library logs f-strings
        if seen is not None and seen[1]:
            record.ctx_suppressed = int(seen[1])
        self._kinds[kind] = [now, 0]
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
