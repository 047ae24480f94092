"""The client's envelope: what it puts on the wire is a contract CloudEvent (checked
against the published schemas), keyed by the personnummer, marked structured mode."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from customer_groups_client import envelope
from tests.schema_validation import validate_event

PNR = "191212121212"


def test_a_command_is_a_structured_cloudevent_its_schema_accepts() -> None:
    event = envelope.build_event(
        "customer_group.add",
        {"personnummer": PNR, "actor": {"user_id": "n", "unit_id": "u"}, "group_code": "X"},
        source="/vaccination/client-a",
    )
    assert event["specversion"] == "1.0"
    assert event["datacontenttype"] == "application/json"
    assert event["time"].endswith("Z")
    validate_event(event)
    decoded = json.loads(envelope.encode(event))
    assert decoded == event


def test_a_retry_keeps_the_id_and_each_new_event_gets_its_own() -> None:
    data = {"personnummer": PNR}
    first = envelope.build_event("t", data, source="/s")
    second = envelope.build_event("t", data, source="/s")
    retry = envelope.build_event("t", data, source="/s", event_id=first["id"])
    assert first["id"] != second["id"]
    assert retry["id"] == first["id"]


def test_the_value_is_compact_utf8_json_keeping_swedish_letters() -> None:
    value = envelope.encode(envelope.build_event("t", {"name": "Övrigt"}, source="/s"))
    assert "Övrigt".encode() in value
    assert b": " not in value and b", " not in value


def test_the_key_is_the_personnummer_and_nothing_else_passes() -> None:
    assert envelope.record_key(PNR) == PNR.encode()
    for wrong in ("19121212-1212", "1212121212", "19121212121X", " 191212121212", ""):
        with pytest.raises(ValueError, match="12 digits"):
            envelope.record_key(wrong)


def test_records_say_structured_mode_as_the_kafka_binding_names_it() -> None:
    assert envelope.HEADERS == [("content-type", b"application/cloudevents+json; charset=UTF-8")]


def test_instants_carry_their_offset_and_a_naive_time_is_refused() -> None:
    stockholm = timezone(timedelta(hours=1))
    assert envelope.instant(datetime(2026, 11, 26, 14, 20, tzinfo=stockholm)) == (
        "2026-11-26T14:20:00+01:00"
    )
    with pytest.raises(ValueError, match="timezone"):
        envelope.instant(datetime(2026, 11, 26, 14, 20))
    with pytest.raises(ValueError, match="timezone"):
        envelope.build_event("t", {}, source="/s", time=datetime(2026, 1, 1))
    assert envelope.build_event("t", {}, source="/s", time=datetime(2026, 1, 1, tzinfo=UTC))[
        "time"
    ] == ("2026-01-01T00:00:00Z")


def test_decoding_reads_what_the_service_sends_and_refuses_what_is_not_an_event() -> None:
    raw = b'{"specversion":"1.0","id":"e1","source":"/s","type":"x","time":"2026-11-26T13:21:04.512000+01:00","data":{"command_id":"c1"},"dataschema":"https://s/x"}'
    event = envelope.decode(raw, topic="t", partition=2, offset=7)
    assert (event.id, event.type, event.command_id) == ("e1", "x", "c1")
    assert event.time == datetime(2026, 11, 26, 12, 21, 4, 512000, tzinfo=UTC)
    assert (event.topic, event.partition, event.offset) == ("t", 2, 7)
    assert event.attributes["dataschema"] == "https://s/x"
    for bad in (None, b"\xff", b"[]", b'{"specversion":"0.3","id":"e","source":"s","type":"t"}',
                b'{"specversion":"1.0","source":"s","type":"t"}'):  # fmt: skip
        with pytest.raises(envelope.InvalidEvent):
            envelope.decode(bad)
