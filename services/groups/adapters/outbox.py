"""Writing outgoing records and dead letters inside the current transaction."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.records import Header, SourceRecord, dead_letter_headers
from services.groups.adapters.orm import dead_letters, outbox


def encode_headers(headers: Sequence[Header]) -> list[list[str]]:
    """Kafka header values are bytes; JSONB holds them as base64."""
    return [[name, base64.b64encode(value).decode()] for name, value in headers]


def decode_headers(stored: Sequence[Sequence[str]]) -> list[Header]:
    return [(name, base64.b64decode(value)) for name, value in stored]


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
        value: bytes | None,
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
        headers = dead_letter_headers(record, error_code, message, self._service)
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
