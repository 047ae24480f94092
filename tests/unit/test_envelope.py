from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.envelope import PoisonRecord, decode_cloudevent, new_event


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
