from __future__ import annotations

import json
import logging
import sys

from services.common.logs import (
    JsonFormatter,
    RepeatFilter,
    configure_logging,
    redact_personnummer,
    scrubbed_traceback,
)


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


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeated_library_errors_are_let_through_once_per_interval_with_a_count() -> None:
    now = [0.0]
    repeats = RepeatFilter(("aiokafka",), interval=30.0, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    passed = []
    for step in range(600):  # 60 s of an attempt every 0.1 s
        now[0] = step * 0.1
        record = _record("aiokafka", template, 1, f"refused {step}")
        if repeats.filter(record):
            passed.append(record)
    assert len(passed) == 2, "the first, and one after 30 s"
    assert not hasattr(passed[0], "ctx_suppressed")
    assert passed[1].ctx_suppressed == 299
    assert json.loads(JsonFormatter().format(passed[1]))["suppressed"] == 299


def test_kinds_are_counted_apart_and_other_loggers_are_untouched() -> None:
    repeats = RepeatFilter(("aiokafka",), interval=30.0, clock=lambda: 0.0)
    assert repeats.filter(_record("aiokafka.consumer.fetcher", "Failed fetch %s", 1))
    assert repeats.filter(_record("aiokafka.consumer.group_coordinator", "Failed fetch %s", 1))
    assert repeats.filter(_record("aiokafka", "Failed fetch %s", 1, level=logging.WARNING))
    assert not repeats.filter(_record("aiokafka.consumer.fetcher", "Failed fetch %s", 2))
    for _ in range(3):
        assert repeats.filter(_record("services.groups.consumer", "batch failed"))
        assert repeats.filter(_record("aiokafkaesque", "not aiokafka's"))


def test_the_services_handler_holds_repeats_back() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        (handler,) = root.handlers
        assert any(isinstance(f, RepeatFilter) for f in handler.filters)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
