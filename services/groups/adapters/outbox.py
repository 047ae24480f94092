"""Outgoing records and dead letters, written with the transaction that produced them."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from services.common.db import postgres_can_store
from services.common.envelope import CLOUDEVENT_HEADERS
from services.common.records import Header, SourceRecord, dead_letter_headers
from services.groups.adapters import batch_writer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode_headers(headers: Sequence[Header]) -> list[list[str]]:
    """Kafka header values are bytes; JSONB holds them as base64. A name JSONB cannot
    hold (a NUL, a lone surrogate: a hostile record's header, to be dead-lettered as it
    came) goes as base64 too, in a third element."""
    return [
        [name, _b64(value)]
        if postgres_can_store(name)
        else ["", _b64(value), _b64(name.encode("utf-8", "surrogatepass"))]
        for name, value in headers
    ]


def decode_headers(stored: Sequence[Sequence[str]]) -> list[Header]:
    return [
        (
            base64.b64decode(item[2]).decode("utf-8", "surrogatepass")
            if len(item) == 3
            else item[0],
            base64.b64decode(item[1]),
        )
        for item in stored
    ]


def _headers_json(headers: Sequence[Header]) -> str:
    return orjson.dumps(encode_headers(headers)).decode()


_CLOUDEVENT_HEADERS_JSON = _headers_json(CLOUDEVENT_HEADERS)


class Outbox:
    """Collects rows in memory; the unit of work writes them with its other changes."""

    def __init__(self, *, dlq_topic: str, service: str) -> None:
        self._dlq_topic = dlq_topic
        self._service = service
        self._rows: list[dict[str, Any]] = []
        self._dead_letters: list[dict[str, Any]] = []
        self.written = 0
        # The rows' `created_at`: the receipt of the inbound batch that causes them (the
        # relay measures prompt latency from it), else the transaction's start.
        self.received_at: datetime | None = None

    async def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] = (),
    ) -> None:
        self._rows.append(
            {
                "topic": topic,
                "key": key,
                "value": value,
                "headers": _headers_json(headers),
                "created_at": self.received_at,
            }
        )

    async def add_event(self, topic: str, key: bytes | None, value: bytes) -> None:
        """A CloudEvent the service publishes (prompt, event, catalog group), with the
        structured-mode `content-type` header. Dead letters and replays use `add`: they
        go out as the original record was."""
        self._rows.append(
            {
                "topic": topic,
                "key": key,
                "value": value,
                "headers": _CLOUDEVENT_HEADERS_JSON,
                "created_at": self.received_at,
            }
        )

    async def dead_letter(self, record: SourceRecord, error_code: str, message: str) -> None:
        """The original key, value and headers, plus headers naming the error and origin."""
        headers = _headers_json(dead_letter_headers(record, error_code, message, self._service))
        self._dead_letters.append(
            {
                "source_topic": record.topic,
                "source_partition": record.partition,
                "source_offset": record.offset,
                "key": record.key,
                "value": record.value,
                "headers": headers,
                "error_code": error_code,
                "error_message": message[:1000],
            }
        )
        await self.add(self._dlq_topic, record.key, record.value)
        self._rows[-1]["headers"] = headers

    def discard(self) -> None:
        self._rows.clear()
        self._dead_letters.clear()

    def take_writes(self) -> dict[batch_writer.Columns, batch_writer.Rows]:
        """The pending rows for `batch_writer.write`, in order (outbox ids, and so the
        publishing order, follow it); then forgotten."""
        rows, self._rows = self._rows, []
        letters, self._dead_letters = self._dead_letters, []
        self.written += len(rows)
        return {batch_writer.OUTBOX: rows, batch_writer.DEAD_LETTERS: letters}
