"""Writing outgoing records and dead letters inside the current transaction."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters.orm import dead_letters, outbox

Header = tuple[str, bytes]


def encode_headers(headers: Sequence[Header]) -> list[list[str]]:
    """Kafka header values are bytes; JSONB holds them as base64."""
    return [[name, base64.b64encode(value).decode()] for name, value in headers]


def decode_headers(stored: Sequence[Sequence[str]]) -> list[Header]:
    return [(name, base64.b64decode(value)) for name, value in stored]


@dataclass(frozen=True)
class SourceRecord:
    """Where an inbound record came from, and its bytes exactly as received."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]


class Outbox:
    def __init__(self, connection: AsyncConnection, *, dlq_topic: str, service: str) -> None:
        self._connection = connection
        self._dlq_topic = dlq_topic
        self._service = service
        self.written = 0

    async def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[Header] = (),
    ) -> None:
        await self._connection.execute(
            insert(outbox).values(
                topic=topic, key=key, value=value, headers=encode_headers(headers)
            )
        )
        self.written += 1

    async def dead_letter(self, record: SourceRecord, error_code: str, message: str) -> None:
        """The original key, value and headers, plus headers naming the error and origin."""
        error_headers: list[Header] = [
            ("dlq-error-code", error_code.encode()),
            ("dlq-error-message", message[:1000].encode()),
            ("dlq-source-topic", record.topic.encode()),
            ("dlq-source-partition", str(record.partition).encode()),
            ("dlq-source-offset", str(record.offset).encode()),
            ("dlq-service", self._service.encode()),
        ]
        headers = [*record.headers, *error_headers]
        row: dict[str, Any] = {
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "key": record.key,
            "value": record.value,
            "headers": encode_headers(headers),
            "error_code": error_code,
            "error_message": message[:1000],
        }
        await self._connection.execute(insert(dead_letters).values(**row))
        await self._connection.execute(
            insert(outbox).values(
                topic=self._dlq_topic,
                key=record.key,
                value=record.value,
                headers=encode_headers(headers),
            )
        )
        self.written += 1
