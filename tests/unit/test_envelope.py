from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.envelope import (
    CLOUDEVENT_HEADERS,
    PoisonRecord,
    decode_cloudevent,
    new_event,
)
from services.groups.adapters import batch_writer
from services.groups.adapters.outbox import Outbox, decode_headers


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_raise_poison(raw: bytes) -> None:
    try:
        event = decode_cloudevent(raw)
    except PoisonRecord as poison:
        assert poison.error_code in {
            "INVALID_JSON",
            "NOT_A_CLOUDEVENT",
            "EMPTY_RECORD",
            "RECORD_TOO_LARGE",
        }
    else:
        assert event.id and event.type and event.source


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_arbitrary_json_objects_decode_or_raise_poison(obj: dict[str, object]) -> None:
    try:
        decode_cloudevent(json.dumps(obj).encode())
    except PoisonRecord:
        pass


@given(st.text(min_size=1, max_size=50).filter(str.isprintable), json_values)
def test_round_trip(type_: str, data: object) -> None:
    event = new_event(type_.strip() or "t", "/src", data)
    decoded = decode_cloudevent(event.to_bytes())
    assert (decoded.id, decoded.type, decoded.data) == (event.id, event.type, event.data)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "EMPTY_RECORD"),
        (b"\xff\xfe", "INVALID_JSON"),
        (b"[" * 100_000, "INVALID_JSON"),
        (b'{"specversion": "1.0"}', "NOT_A_CLOUDEVENT"),
        (
            b'{"specversion": "1.0", "id": "a\\u0000", "source": "s", "type": "t"}',
            "NOT_A_CLOUDEVENT",
        ),
        (
            b'{"specversion": "1.0", "id": "a", "source": "s", "type": "t", "time": "noon"}',
            "NOT_A_CLOUDEVENT",
        ),
        (b"{" + b" " * 300_000 + b"}", "RECORD_TOO_LARGE"),
    ],
)
def test_poison_codes(raw: bytes | None, code: str) -> None:
    with pytest.raises(PoisonRecord) as caught:
        decode_cloudevent(raw)
    assert caught.value.error_code == code


def test_a_number_beyond_the_json_parsers_limits_is_invalid_json() -> None:
    raw = b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":' + b"9" * 5000 + b"}"
    with pytest.raises(PoisonRecord) as caught:
        decode_cloudevent(raw, max_bytes=10_000)
    assert caught.value.error_code == "INVALID_JSON"


def test_an_outgoing_event_names_its_schema_before_its_time() -> None:
    event = json.loads(new_event("customer_group.added", "/src", {"a": 1}).to_bytes())
    assert event["dataschema"] == (
        "https://schemas.customer-groups.example/v1/customer_group.added.schema.json"
    )
    assert list(event) == [
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "dataschema",
        "time",
        "data",
    ]


async def test_events_go_out_with_the_structured_content_type_and_dead_letters_without() -> None:
    outbox = Outbox(dlq_topic="dlq", service="groups-service")
    await outbox.add_event("events", b"k", b"{}")
    await outbox.add("bookings", b"k", b"original")  # a replay: the original record
    rows = outbox.take_writes()[batch_writer.OUTBOX]
    headers = [decode_headers(json.loads(row["headers"])) for row in rows]
    assert headers == [list(CLOUDEVENT_HEADERS), []]
    assert CLOUDEVENT_HEADERS == (("content-type", b"application/cloudevents+json; charset=UTF-8"),)
