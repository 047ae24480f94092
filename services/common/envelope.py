"""CloudEvents 1.0 structured-mode JSON envelope: decode inbound records, build outbound ones.

Decoding never loses the original bytes: a record that is not valid JSON, not a
CloudEvent, or too large raises `PoisonRecord`, and the caller dead-letters the
record exactly as it arrived.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

SPECVERSION = "1.0"
MAX_EVENT_BYTES = 256 * 1024

# Every record the services publish, dead letters aside, is a CloudEvent in structured
# mode (contract revision 2): this header tells any CloudEvents SDK's Kafka binding so.
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
CLOUDEVENT_HEADERS: tuple[tuple[str, bytes], ...] = (
    ("content-type", STRUCTURED_CONTENT_TYPE.encode()),
)
# The `$id`s of the JSON Schemas in schemas/: names, not download locations.
SCHEMA_ID_BASE = "https://schemas.customer-groups.example/v1/"


def dataschema_for(type_: str) -> str:
    """The `dataschema` attribute of an event of `type_`: the `$id` of its data's schema
    (schemas/<type>.schema.json)."""
    return f"{SCHEMA_ID_BASE}{type_}.schema.json"


class PoisonRecord(Exception):
    """A record that can never be processed as it is; it goes to the dead-letter topic."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class CloudEvent:
    id: str
    source: str
    type: str
    time: datetime | None
    data: Any
    subject: str | None = None
    dataschema: str | None = None

    def to_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "datacontenttype": "application/json",
        }
        if self.dataschema is not None:
            event["dataschema"] = self.dataschema
        if self.time is not None:
            event["time"] = self.time.isoformat().replace("+00:00", "Z")
        if self.subject is not None:
            event["subject"] = self.subject
        event["data"] = self.data
        return event

    def to_bytes(self) -> bytes:
        return encode_json(self.to_dict())


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, key order kept. orjson gives the same bytes as
    json.dumps(ensure_ascii=False, separators=(",", ":")) more cheaply (BENCHMARKS.md, fix
    4), except for what it refuses (an integer beyond 64 bits): json still writes that,
    rather than fail a batch and retry it forever."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def new_event(
    type_: str, source: str, data: Any, *, event_id: str | None = None, time: datetime | None = None
) -> CloudEvent:
    """An outgoing event: its `dataschema` names the schema of its type."""
    return CloudEvent(
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=type_,
        time=time or datetime.now(UTC),
        data=data,
        dataschema=dataschema_for(type_),
    )


def _require_str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PoisonRecord("NOT_A_CLOUDEVENT", f"attribute '{name}' must be a non-empty string")
    if len(value) > 1024:
        raise PoisonRecord("NOT_A_CLOUDEVENT", f"attribute '{name}' is longer than 1024 characters")
    if not value.isprintable():
        raise PoisonRecord("NOT_A_CLOUDEVENT", f"attribute '{name}' has control characters")
    return value


def decode_cloudevent(raw: bytes | None, *, max_bytes: int = MAX_EVENT_BYTES) -> CloudEvent:
    """Parse one record value. Raises PoisonRecord with a stable error code."""
    if raw is None:
        raise PoisonRecord("EMPTY_RECORD", "record has no value")
    if len(raw) > max_bytes:
        raise PoisonRecord("RECORD_TOO_LARGE", f"record is {len(raw)} bytes, limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except ValueError as exc:  # not UTF-8, not JSON, or beyond json's limits (huge numbers)
        raise PoisonRecord(
            "INVALID_JSON", f"value is not UTF-8 JSON: {type(exc).__name__}"
        ) from None
    except RecursionError:
        raise PoisonRecord("INVALID_JSON", "value nests too deeply") from None
    if not isinstance(obj, dict):
        raise PoisonRecord("NOT_A_CLOUDEVENT", "value is not a JSON object")
    if obj.get("specversion") != SPECVERSION:
        raise PoisonRecord("NOT_A_CLOUDEVENT", "specversion must be '1.0'")
    event_id = _require_str(obj, "id")
    source = _require_str(obj, "source")
    type_ = _require_str(obj, "type")
    content_type = obj.get("datacontenttype", "application/json")
    if (
        not isinstance(content_type, str)
        or content_type.split(";")[0].strip() != "application/json"
    ):
        raise PoisonRecord("NOT_A_CLOUDEVENT", "datacontenttype must be application/json")
    time: datetime | None = None
    if "time" in obj and obj["time"] is not None:
        if not isinstance(obj["time"], str):
            raise PoisonRecord("NOT_A_CLOUDEVENT", "time must be an RFC 3339 string")
        try:
            time = datetime.fromisoformat(obj["time"].replace("Z", "+00:00"))
        except ValueError:
            raise PoisonRecord("NOT_A_CLOUDEVENT", "time is not RFC 3339") from None
        if time.tzinfo is None or len(obj["time"]) < 20:
            raise PoisonRecord("NOT_A_CLOUDEVENT", "time must be an RFC 3339 instant with offset")
    subject = obj.get("subject") if isinstance(obj.get("subject"), str) else None
    return CloudEvent(
        id=event_id, source=source, type=type_, time=time, data=obj.get("data"), subject=subject
    )
