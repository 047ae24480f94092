"""Stored headers give back exactly the headers a record came with, whatever their names."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from services.groups.adapters.outbox import decode_headers, encode_headers

names = st.text(max_size=20) | st.sampled_from(["a\x00b", "\ud800", "dlq-error-code", ""])


@given(st.lists(st.tuples(names, st.binary(max_size=40)), max_size=6))
def test_headers_survive_storage(headers: list[tuple[str, bytes]]) -> None:
    stored = orjson.loads(orjson.dumps(encode_headers(headers)))
    assert "\\u0000" not in orjson.dumps(stored).decode(), "JSONB refuses NUL"
    assert decode_headers(stored) == headers
