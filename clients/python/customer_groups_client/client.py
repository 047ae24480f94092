"""The client: publishes what booking systems and vaccination clients send, and reads
the service's prompts and events (`read_committed`) to answer waits by id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import date, datetime
from types import TracebackType
from typing import Any, Final, NotRequired, Self, TypedDict, Unpack

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition

from customer_groups_client import envelope
from customer_groups_client.config import KafkaConfig, Topics
from customer_groups_client.correlation import Correlator
from customer_groups_client.models import (
    CATALOG_GROUP,
    Actor,
    Catalog,
    Group,
    Outcome,
    Prompt,
    RequestedGroup,
    Vaccine,
    version_key,
)

log = logging.getLogger(__name__)


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


# In `update`: leave the field as it is (absent from the command); None clears it.
UNCHANGED: Final = _Unchanged()

_FATAL = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)


class StartFields(TypedDict):
    """`publish_start`'s keyword arguments."""

    actor: Actor
    personnummer: str
    booking_id: NotRequired[str | None]
    vaccine: NotRequired[Vaccine | None]
    event_id: NotRequired[str | None]


class RegistrationFields(TypedDict):
    """`publish_registration`'s keyword arguments."""

    actor: Actor
    personnummer: str
    administered_at: datetime
    vaccine: Vaccine
    booking_id: NotRequired[str | None]
    entered_in_error: NotRequired[bool]
    event_id: NotRequired[str | None]


class CustomerGroupsClient:
    """One producer (idempotent, `acks=all`) and, unless `listen=False`, one consumer of
    the prompts and events topics (no consumer group: it assigns every partition).

    The consumer's position is fixed when the client starts: at the end of each
    partition, or at `since` (a restarted client that sent commands before it stopped
    passes the time it last sent one, so their outcomes are read again). Everything
    published after that is seen, so an outcome is never missed between sending a
    command and waiting for it. A booking system, which may not read the service's
    topics, uses `listen=False`.

    Use as `async with CustomerGroupsClient(KafkaConfig(...)) as client:`.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        *,
        topics: Topics | None = None,
        source: str = "/customer-groups-client",
        listen: bool = True,
        since: datetime | None = None,
        remember: int = 10_000,
        timeout: float = 30.0,
    ) -> None:
        """`source` names the sending system in every CloudEvent (e.g.
        `/vaccination/client-a`); `timeout` is the default wait in seconds; `remember`
        how many recent outcomes and prompts are kept for waits that come late."""
        self.kafka = kafka
        self.topics = topics or Topics()
        self.source = source
        self.timeout = timeout
        self._listen = listen
        self._since = since
        self._correlator = Correlator(remember)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (a refused login or an unreachable broker raises here, not at the
        first send) and, when listening, fix the reading position."""
        self._producer = AIOKafkaProducer(
            **self.kafka.aiokafka_kwargs(), acks="all", enable_idempotence=True
        )
        try:
            await self._producer.start()
            if self._listen:
                await self._start_reader()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # -- reading ---------------------------------------------------------------------

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        # The producer waits for the topic's metadata (the consumer would not).
        assert self._producer is not None, "the client is not started"
        return [
            TopicPartition(topic, p) for p in sorted(await self._producer.partitions_for(topic))
        ]

    def _consumer_for(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self.kafka.aiokafka_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            # The service publishes in Kafka transactions: an aborted one's records are
            # published again, and only a read_committed reader never sees them twice.
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )

    async def _start_reader(self) -> None:
        partitions = [
            *await self._partitions(self.topics.prompts),
            *await self._partitions(self.topics.events),
        ]
        self._consumer = self._consumer_for()
        await self._consumer.start()
        self._consumer.assign(partitions)
        starts: dict[TopicPartition, Any] = {}
        if self._since is not None:
            millis = int(self._since.timestamp() * 1000)
            starts = await self._consumer.offsets_for_times({tp: millis for tp in partitions})
        for tp in partitions:
            found = starts.get(tp)
            if found is not None:
                self._consumer.seek(tp, found.offset)
            else:
                await self._consumer.seek_to_end(tp)
            # Resolve the position now, so what is published from here on is read.
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read(), name="customer-groups-client-reader")

    async def _read(self) -> None:
        assert self._consumer is not None
        pause = 0.1
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=500)
            except _FATAL as error:
                log.error("reading stopped: %s", type(error).__name__)
                self._correlator.fail(error)
                return
            except KafkaError as error:  # broker away: aiokafka reconnects, we wait
                log.warning("reading failed, retrying: %s", type(error).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            pause = 0.1
            for records in batch.values():
                for record in records:
                    self._take(record)

    def _take(self, record: Any) -> None:
        try:
            event = envelope.decode(
                record.value, topic=record.topic, partition=record.partition, offset=record.offset
            )
            self._correlator.add(event)
        except (ValueError, KeyError, TypeError) as error:
            # Position only: the value may hold patient data.
            log.warning(
                "skipped a record that is not a contract event: %s %d@%d (%s)",
                record.topic,
                record.partition,
                record.offset,
                type(error).__name__,
            )

    def _require_listening(self) -> None:
        if not self._listen:
            raise RuntimeError("this client does not read the service's topics (listen=False)")

    async def outcome(self, command_id: str, *, timeout: float | None = None) -> Outcome:
        """The event answering the command (or registration) with this CloudEvent id:
        `added` / `updated` / `removed`, `vaccination_groups_confirmed` (prompt_close,
        registration) or `command_rejected`. Raises OutcomeTimeout."""
        self._require_listening()
        return await self._correlator.outcome(command_id, timeout or self.timeout)

    async def prompt(self, vaccination_id: str, *, timeout: float | None = None) -> Prompt:
        """The prompt of this vaccination (read since the client started). Raises
        OutcomeTimeout."""
        self._require_listening()
        return await self._correlator.prompt(vaccination_id, timeout or self.timeout)

    async def prompts(self, unit_id: str, *, replay: bool = True) -> AsyncIterator[Prompt]:
        """Every prompt for the unit as it arrives (with `replay`, first those read since
        the client started), each once. Ends only with the client or an error."""
        self._require_listening()
        queue = self._correlator.subscribe(unit_id, replay=replay)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._correlator.unsubscribe(queue)

    async def read_catalog(self, *, timeout: float | None = None) -> Catalog:
        """The catalog feed (compacted topic, one record per group), read from the start:
        per group the entry of the highest `catalog_version`."""
        assert self._producer is not None, "the client is not started"
        partitions = await self._partitions(self.topics.catalog)
        consumer = self._consumer_for()
        await consumer.start()
        groups: dict[str, Group] = {}
        try:
            async with asyncio.timeout(timeout or self.timeout):
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
                ends = await consumer.end_offsets(partitions)
                behind = [tp for tp in partitions if ends[tp] > 0]
                while behind:
                    batch = await consumer.getmany(*behind, timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            event = envelope.decode(record.value)
                            if event.type != CATALOG_GROUP:
                                continue
                            group = Group.from_data(event.data)
                            known = groups.get(group.group_code)
                            if known is None or version_key(
                                group.catalog_version or "0"
                            ) >= version_key(known.catalog_version or "0"):
                                groups[group.group_code] = group
                    behind = [tp for tp in behind if await consumer.position(tp) < ends[tp]]
        finally:
            await consumer.stop()
        versions = [g.catalog_version for g in groups.values() if g.catalog_version]
        return Catalog(max(versions, key=version_key, default=""), tuple(groups.values()))

    # -- publishing ----------------------------------------------------------------------

    async def _publish(
        self,
        topic: str,
        type_: str,
        data: dict[str, Any],
        personnummer: str,
        event_id: str | None,
    ) -> str:
        assert self._producer is not None, "the client is not started"
        key = envelope.record_key(personnummer)
        event = envelope.build_event(type_, data, source=self.source, event_id=event_id)
        await self._producer.send_and_wait(
            topic, envelope.encode(event), key=key, headers=envelope.HEADERS
        )
        return str(event["id"])

    async def publish_booking(
        self,
        booking_id: str,
        *,
        unit_id: str,
        start_time: datetime,
        personnummer: str,
        first_name: str | None = None,
        last_name: str | None = None,
        vaccine: Vaccine | None = None,
        requested_group: RequestedGroup | None = None,
        updated: bool = False,
        event_id: str | None = None,
    ) -> str:
        """`booking.created` (or `booking.updated`): an upsert by `booking_id`. Returns
        the event id. Publish it before the vaccination starts."""
        customer: dict[str, Any] = {"personnummer": personnummer}
        if first_name is not None:
            customer["first_name"] = first_name
        if last_name is not None:
            customer["last_name"] = last_name
        data: dict[str, Any] = {
            "booking_id": booking_id,
            "unit_id": unit_id,
            "start_time": envelope.instant(start_time),
            "customer": customer,
        }
        if vaccine is not None:
            data["vaccine"] = {"code": vaccine.code, "name": vaccine.name}
            if vaccine.dose is not None:
                data["vaccine"]["dose"] = vaccine.dose
        if requested_group is not None:
            data["requested_group"] = {"group_code": requested_group.group_code}
            if requested_group.subgroup_code is not None:
                data["requested_group"]["subgroup_code"] = requested_group.subgroup_code
        type_ = "booking.updated" if updated else "booking.created"
        return await self._publish(self.topics.bookings, type_, data, personnummer, event_id)

    async def publish_booking_cancelled(
        self, booking_id: str, *, unit_id: str, personnummer: str, event_id: str | None = None
    ) -> str:
        """`booking.cancelled`; its data names no personnummer, the record key does."""
        data = {"booking_id": booking_id, "unit_id": unit_id}
        return await self._publish(
            self.topics.bookings, "booking.cancelled", data, personnummer, event_id
        )

    async def publish_start(
        self,
        vaccination_id: str,
        *,
        actor: Actor,
        personnummer: str,
        booking_id: str | None = None,
        vaccine: Vaccine | None = None,
        event_id: str | None = None,
    ) -> str:
        """`vaccination.started` (the nurse clicked "Starta vaccination"). Returns the
        event id; the answer is one prompt per vaccination_id (`prompt`)."""
        data: dict[str, Any] = {
            "vaccination_id": vaccination_id,
            "unit_id": actor.unit_id,
            "user_id": actor.user_id,
            "personnummer": personnummer,
        }
        if booking_id is not None:
            data["booking_id"] = booking_id
        if vaccine is not None:
            data["vaccine"] = {"code": vaccine.code, "name": vaccine.name}
        return await self._publish(
            self.topics.started, "vaccination.started", data, personnummer, event_id
        )

    async def start_vaccination(
        self,
        vaccination_id: str,
        *,
        timeout: float | None = None,
        **start: Unpack[StartFields],
    ) -> Prompt:
        """Publish the start (`publish_start`'s arguments) and wait for its prompt.
        Raises CommandRejected when the service refused the start, OutcomeTimeout when
        nothing came in time (then fetch it with `GET /prompt`, or publish the start
        again: the same prompt comes)."""
        self._require_listening()
        start_id = await self.publish_start(vaccination_id, **start)
        return await self._correlator.answer_to_start(
            start_id,
            vaccination_id,
            personnummer=start["personnummer"],
            unit_id=start["actor"].unit_id,
            timeout=timeout or self.timeout,
        )

    async def publish_registration(
        self,
        vaccination_id: str,
        *,
        actor: Actor,
        personnummer: str,
        administered_at: datetime,
        vaccine: Vaccine,
        booking_id: str | None = None,
        entered_in_error: bool = False,
        event_id: str | None = None,
    ) -> str:
        """`vaccination.registered`: the dose signed in the record (also afterwards, with
        its real time). Returns the event id, which the answer names as `command_id`."""
        vaccine_data: dict[str, Any] = {"code": vaccine.code, "name": vaccine.name}
        if vaccine.dose is not None:
            vaccine_data["dose_number"] = vaccine.dose
        data: dict[str, Any] = {
            "vaccination_id": vaccination_id,
            "unit_id": actor.unit_id,
            "user_id": actor.user_id,
            "personnummer": personnummer,
            "administered_at": envelope.instant(administered_at),
            "vaccine": vaccine_data,
        }
        if booking_id is not None:
            data["booking_id"] = booking_id
        if entered_in_error:
            data["status"] = "entered_in_error"
        return await self._publish(
            self.topics.registered, "vaccination.registered", data, personnummer, event_id
        )

    async def register_vaccination(
        self,
        vaccination_id: str,
        *,
        timeout: float | None = None,
        **registration: Unpack[RegistrationFields],
    ) -> Outcome:
        """Publish the registration (`publish_registration`'s arguments) and wait for its
        answer (the dose's record, `outcome.confirmation`, or a rejection). The same
        registration again is not answered (nothing changed): that wait ends in
        OutcomeTimeout."""
        self._require_listening()
        sent = await self.publish_registration(vaccination_id, **registration)
        return await self.outcome(sent, timeout=timeout)

    # -- commands --------------------------------------------------------------------

    async def send_command(
        self,
        name: str,
        *,
        personnummer: str,
        actor: Actor,
        fields: dict[str, Any],
        command_id: str | None = None,
    ) -> str:
        """Publish `customer_group.<name>` (add, update, remove, prompt_close) and return
        its id. A retry sends the same command with the same `command_id`: the service
        applies a command id once (for at least 7 days)."""
        data = {"personnummer": personnummer, "actor": actor.to_data(), **fields}
        return await self._publish(
            self.topics.commands, f"customer_group.{name}", data, personnummer, command_id
        )

    async def _command(
        self,
        name: str,
        personnummer: str,
        actor: Actor,
        fields: dict[str, Any],
        command_id: str | None,
        timeout: float | None,
    ) -> Outcome:
        self._require_listening()
        if (
            command_id is not None
            and (known := self._correlator.known_outcome(command_id)) is not None
        ):
            return known  # answered already: a resend would be ignored anyway
        sent = await self.send_command(
            name, personnummer=personnummer, actor=actor, fields=fields, command_id=command_id
        )
        return await self.outcome(sent, timeout=timeout)

    async def add(
        self,
        personnummer: str,
        *,
        actor: Actor,
        group_code: str,
        subgroup_code: str | None = None,
        reference_code: str | None = None,
        valid_from: date | None = None,
        prompt_id: str | None = None,
        command_id: str | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """`customer_group.add`: "Lägg till" (with the popup's `prompt_id`) or "Spara"
        (without; `valid_from` back-dates an after-registration). The outcome's
        `membership` is the new membership, or `rejection` says why not."""
        fields: dict[str, Any] = {"group_code": group_code}
        if subgroup_code is not None:
            fields["subgroup_code"] = subgroup_code
        if reference_code is not None:
            fields["reference_code"] = reference_code
        if valid_from is not None:
            fields["valid_from"] = valid_from.isoformat()
        if prompt_id is not None:
            fields["prompt_id"] = prompt_id
        return await self._command("add", personnummer, actor, fields, command_id, timeout)

    async def update(
        self,
        personnummer: str,
        *,
        actor: Actor,
        membership_id: str,
        group_code: str | _Unchanged = UNCHANGED,
        subgroup_code: str | _Unchanged | None = UNCHANGED,
        reference_code: str | _Unchanged | None = UNCHANGED,
        command_id: str | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """`customer_group.update` (the pencil): a field left UNCHANGED stays, None
        clears it; a new `group_code` without `subgroup_code` clears the subgroup."""
        fields: dict[str, Any] = {"membership_id": membership_id}
        for name, value in (
            ("group_code", group_code),
            ("subgroup_code", subgroup_code),
            ("reference_code", reference_code),
        ):
            if value is not UNCHANGED:
                fields[name] = value
        return await self._command("update", personnummer, actor, fields, command_id, timeout)

    async def remove(
        self,
        personnummer: str,
        *,
        actor: Actor,
        membership_id: str,
        valid_to: date | None = None,
        entered_in_error: bool = False,
        command_id: str | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """`customer_group.remove` (the red ball): the membership ends (historical,
        `valid_to` default today), or, `entered_in_error`, it never applied."""
        fields: dict[str, Any] = {"membership_id": membership_id}
        if valid_to is not None:
            fields["valid_to"] = valid_to.isoformat()
        if entered_in_error:
            fields["reason"] = "entered_in_error"
        return await self._command("remove", personnummer, actor, fields, command_id, timeout)

    async def close_prompt(
        self,
        personnummer: str,
        *,
        actor: Actor,
        prompt_id: str,
        vaccination_id: str,
        command_id: str | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """`customer_group.prompt_close` (the nurse closes the popup): the outcome's
        `confirmation` holds the groups recorded for the vaccination."""
        fields = {"prompt_id": prompt_id, "vaccination_id": vaccination_id}
        return await self._command("prompt_close", personnummer, actor, fields, command_id, timeout)
