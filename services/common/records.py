"""Inbound Kafka records as both services see them, and the dead-letter headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faststream.message import StreamMessage

Header = tuple[str, bytes]


@dataclass(frozen=True)
class SourceRecord:
    """Where an inbound record came from, and its bytes exactly as received."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]


def to_source_record(record: Any) -> SourceRecord:
    """From an aiokafka ConsumerRecord."""
    return SourceRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((name, bytes(value or b"")) for name, value in (record.headers or ())),
    )


def batch_records(raw_message: Any) -> list[SourceRecord]:
    """The records of a FastStream batch message (a tuple of ConsumerRecords)."""
    raw = raw_message if isinstance(raw_message, tuple) else (raw_message,)
    return [to_source_record(r) for r in raw]


async def keep_raw_bytes(message: StreamMessage[Any]) -> Any:
    """A FastStream decoder that decodes nothing: the handler gets the bytes as sent."""
    return message.body


def dead_letter_headers(
    record: SourceRecord, error_code: str, message: str, service: str
) -> list[Header]:
    """The original headers, then headers naming the error and where the record came from."""
    return [
        *record.headers,
        ("dlq-error-code", error_code.encode()),
        ("dlq-error-message", message[:1000].encode()),
        ("dlq-source-topic", record.topic.encode()),
        ("dlq-source-partition", str(record.partition).encode()),
        ("dlq-source-offset", str(record.offset).encode()),
        ("dlq-service", service.encode()),
    ]
