"""Where an inbound record becomes a message and finds its handler.

`decode` turns each Kafka record into a typed message, once, before any transaction:
the CloudEvent envelope is checked, its `type` looked up among the types its topic
accepts, and its `data` validated by the message's model (`commands`). A record that
cannot be a message is a `PoisonRecord` (dead-lettered with its original bytes); a
payload that breaks its schema is `Invalid`, which its handler refuses. `handle` calls
the message's handler from the one type -> handler table below.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from services.common.db import postgres_can_store
from services.common.envelope import CloudEvent, PoisonRecord, decode_cloudevent
from services.common.records import SourceRecord
from services.common.settings import TopicSettings
from services.groups.service_layer import handlers
from services.groups.service_layer.commands import (
    AddGroup,
    BookingCancelled,
    BookingUpsert,
    ClosePrompt,
    Invalid,
    Message,
    PreloadKeys,
    RemoveGroup,
    UpdateGroup,
    VaccinationRegistered,
    VaccinationStarted,
)
from services.groups.service_layer.context import Context, Dependencies
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork

log = logging.getLogger(__name__)

Handler = Callable[[Any, Context, AbstractUnitOfWork], Awaitable[None]]
MessageTypes = Mapping[str, Mapping[str, type[Message]]]  # topic -> CloudEvent type -> model

BOOKING_TYPES: dict[str, type[Message]] = {
    "booking.created": BookingUpsert,
    "booking.updated": BookingUpsert,
    "booking.cancelled": BookingCancelled,
}
START_TYPES: dict[str, type[Message]] = {"vaccination.started": VaccinationStarted}
REGISTRATION_TYPES: dict[str, type[Message]] = {"vaccination.registered": VaccinationRegistered}
COMMAND_TYPES: dict[str, type[Message]] = {
    "customer_group.add": AddGroup,
    "customer_group.update": UpdateGroup,
    "customer_group.remove": RemoveGroup,
    "customer_group.prompt_close": ClosePrompt,
}

HANDLERS: dict[type[Message] | type[Invalid], Handler] = {
    BookingUpsert: handlers.booking_upsert,
    BookingCancelled: handlers.booking_cancelled,
    VaccinationStarted: handlers.vaccination_started,
    VaccinationRegistered: handlers.vaccination_registered,
    AddGroup: handlers.add_group,
    UpdateGroup: handlers.update_group,
    RemoveGroup: handlers.remove_group,
    ClosePrompt: handlers.close_prompt,
    Invalid: handlers.refuse_invalid,
}


def message_types(topics: TopicSettings) -> MessageTypes:
    """The types each inbound topic accepts (any other is UNKNOWN_TYPE)."""
    return {
        topics.bookings: BOOKING_TYPES,
        topics.started: START_TYPES,
        topics.registered: REGISTRATION_TYPES,
        topics.commands: COMMAND_TYPES,
    }


def schema_summary(error: ValidationError) -> str:
    """Which fields are wrong and why, without echoing the input values."""
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "data"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Decoded:
    """One record and what decoding made of it."""

    record: SourceRecord
    event: CloudEvent | None  # None: not a CloudEvent (or not one of its topic's types)
    message: Message | Invalid | PoisonRecord
    # What it concerns (customer, booking): records sharing a subject apply in order.
    subjects: tuple[str, ...] = field(repr=False)


def _subjects(
    record: SourceRecord, event: CloudEvent, message: Message | Invalid
) -> tuple[str, ...]:
    named = message.subjects if isinstance(message, Invalid) else message.subjects()
    # Text PostgreSQL cannot store must not fail the whole batch's locks.
    subjects = tuple(s for s in named if postgres_can_store(s))
    if subjects:
        return subjects
    # Nobody's record (e.g. a command without a personnummer): still never applied twice
    # at once, in two parts that would both find it missing from the inbox.
    event_subject = f"event:{record.topic}:{event.id}"
    return (event_subject,) if postgres_can_store(event_subject) else ()


@dataclass(frozen=True)
class DecodedBatch:
    items: list[Decoded]
    # When the consumer handed the batch over: the outbox rows it writes carry it, so the
    # relay can tell a prompt's latency from the start's receipt.
    received_at: datetime | None = None

    @functools.cached_property
    def subjects(self) -> frozenset[str]:
        return frozenset(subject for item in self.items for subject in item.subjects)

    def __len__(self) -> int:
        return len(self.items)

    def one_by_one(self) -> list[DecodedBatch]:
        return [DecodedBatch([item], self.received_at) for item in self.items]

    def events(self) -> list[tuple[str, str]]:
        """(topic, event id) of every CloudEvent, as the inbox knows them."""
        return [(i.record.topic, i.event.id) for i in self.items if i.event is not None]

    def preload_keys(self) -> PreloadKeys:
        keys = PreloadKeys()
        for item in self.items:
            if isinstance(item.message, Message):
                item.message.add_preload_keys(keys)
        return keys


class MessageBus:
    def __init__(
        self,
        types: MessageTypes,
        handler_table: Mapping[type[Message] | type[Invalid], Handler],
        deps: Dependencies,
        *,
        max_event_bytes: int,
    ) -> None:
        self._types = types
        self._handlers = handler_table
        self._deps = deps
        self._max_event_bytes = max_event_bytes

    @property
    def types(self) -> MessageTypes:
        return self._types

    def decode(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        """Decode and validate every record (no I/O)."""
        items: list[Decoded] = []
        for record in records:
            try:
                items.append(self._decode(record))
            except PoisonRecord as poison:
                items.append(Decoded(record, None, poison, ()))
            except Exception as error:  # a decoder bug for this input: never skip the batch
                log.exception("decoding a record failed")
                failed = PoisonRecord("PROCESSING_ERROR", type(error).__name__)
                items.append(Decoded(record, None, failed, ()))
        return DecodedBatch(items)

    def _decode(self, record: SourceRecord) -> Decoded:
        return self.decode_event(
            record, decode_cloudevent(record.value, max_bytes=self._max_event_bytes)
        )

    def decode_event(self, record: SourceRecord, event: CloudEvent) -> Decoded:
        """The message a CloudEvent read from `record` carries; PoisonRecord if its type
        is not accepted on the record's topic."""
        model = self._types.get(record.topic, {}).get(event.type)
        if model is None:
            raise PoisonRecord(
                "UNKNOWN_TYPE", f"type {event.type[:100]!r} is not accepted on {record.topic}"
            )
        message: Message | Invalid
        try:
            message = model.model_validate(event.data)
        except ValidationError as error:
            message = Invalid.of(model, event.data, schema_summary(error))
        return Decoded(record, event, message, _subjects(record, event, message))

    async def handle(self, item: Decoded, uow: AbstractUnitOfWork) -> None:
        """Run the message's handler in `uow`. It raises PoisonRecord or DomainError,
        before changing anything, for a record to dead-letter."""
        message, event = item.message, item.event
        assert event is not None and not isinstance(message, PoisonRecord)
        context = Context(event.id, event.time, item.record.key, self._deps)
        await self._handlers[type(message)](message, context, uow)
