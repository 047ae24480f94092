"""The contract's envelope: CloudEvents 1.0 in structured JSON mode, one event per
Kafka record, keyed by the customer's personnummer."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SPECVERSION = "1.0"
# CloudEvents Kafka protocol binding, structured mode: what tells any CloudEvents SDK
# that the record value is a whole event.
CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
HEADERS: list[tuple[str, bytes]] = [("content-type", CONTENT_TYPE.encode())]

_PERSONNUMMER = re.compile(r"[0-9]{12}")


class InvalidEvent(ValueError):
    """A record value that is not a CloudEvent 1.0 in structured JSON mode."""


@dataclass(frozen=True)
class Event:
    """A CloudEvent as read: its attributes, its `data`, and where it was read from
    (`topic`, `partition`, `offset`; empty for one fetched over HTTP)."""

    id: str
    type: str
    source: str
    time: datetime | None
    data: dict[str, Any]
    topic: str = ""
    partition: int = -1
    offset: int = -1
    attributes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def command_id(self) -> str | None:
        """The id of the command (or start, or registration) this event answers."""
        value = self.data.get("command_id")
        return value if isinstance(value, str) else None


def new_event_id() -> str:
    return str(uuid.uuid4())


def instant(value: datetime) -> str:
    """RFC 3339 with offset; a naive datetime is refused (it names no instant)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("an instant needs a timezone (e.g. datetime.now(UTC))")
    return value.isoformat()


def build_event(
    type_: str,
    data: dict[str, Any],
    *,
    source: str,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A structured-mode CloudEvent. For a command its `id` is the idempotency key:
    send the same command again (a retry) with the same id."""
    if not source:
        raise ValueError("source must name the sending system, e.g. /vaccination/client-a")
    return {
        "specversion": SPECVERSION,
        "id": event_id or new_event_id(),
        "source": source,
        "type": type_,
        "time": instant(time or datetime.now(UTC)).replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


def encode(event: dict[str, Any]) -> bytes:
    """The record value: compact UTF-8 JSON."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def record_key(personnummer: str) -> bytes:
    """The record key: the customer's 12-digit personnummer, so one customer's records
    stay in order. The service checks the rest (date, check digit)."""
    if not isinstance(personnummer, str) or not _PERSONNUMMER.fullmatch(personnummer):
        raise ValueError("personnummer must be 12 digits, YYYYMMDDNNNC, without separator")
    return personnummer.encode()


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def decode(value: bytes | None, *, topic: str = "", partition: int = -1, offset: int = -1) -> Event:
    """Parse a record value (or an HTTP body) holding one CloudEvent."""
    if value is None:
        raise InvalidEvent("record has no value")
    try:
        event = json.loads(value)
    except (ValueError, RecursionError):
        raise InvalidEvent("value is not UTF-8 JSON") from None
    if not isinstance(event, dict) or event.get("specversion") != SPECVERSION:
        raise InvalidEvent("value is not a CloudEvent 1.0")
    for name in ("id", "type", "source"):
        if not isinstance(event.get(name), str):
            raise InvalidEvent(f"CloudEvent attribute {name!r} missing")
    data = event.get("data")
    return Event(
        id=event["id"],
        type=event["type"],
        source=event["source"],
        time=_time(event.get("time")),
        data=data if isinstance(data, dict) else {},
        topic=topic,
        partition=partition,
        offset=offset,
        attributes={k: v for k, v in event.items() if k != "data"},
    )
