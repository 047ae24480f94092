"""Kafka plumbing shared by both services: security, the FastStream broker, topics.

FastStream's defaults are wrong for us, so every choice is made here on purpose:
- topics are never auto-created (a typo must fail loudly, and partition counts and
  the compacted export topic are chosen explicitly by `ensure_topics`);
- producers are idempotent with acks=all, so a retried send never duplicates or drops.

Longer than most modules: it is the one place both services' Kafka clients are
configured (security, consumers, producers, topics), so no choice is made twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import ssl
import struct
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import IllegalStateError, KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from services.common.backoff import Backoff, retry_forever
from services.common.kafka_metadata import pace_metadata_refreshes
from services.common.records import keep_raw_bytes
from services.common.settings import (
    TOPIC_SEGMENT,
    KafkaSettings,
    ServiceSettings,
    TopicSettings,
)
from services.common.telemetry import telemetry_middlewares

log = logging.getLogger(__name__)

# Every aiokafka client of the process, FastStream's too: without it a consumer can spin
# a whole core while the broker is down (see the module).
pace_metadata_refreshes()


def build_security(settings: KafkaSettings) -> BaseSecurity | None:
    """SASL/SSL from settings; None for PLAINTEXT."""
    protocol = settings.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context: ssl.SSLContext | None = None
    if use_ssl:
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    username = settings.sasl_username or ""
    mechanism = (settings.sasl_mechanism or "PLAIN").upper()
    classes: dict[str, type[SASLPlaintext] | type[SASLScram256] | type[SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    if mechanism not in classes:
        raise ValueError(f"unsupported KAFKA_SASL_MECHANISM {mechanism!r}")
    return classes[mechanism](username, password, ssl_context=context, use_ssl=use_ssl)


def client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Connection kwargs for raw aiokafka clients (producer, admin)."""
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    security = build_security(settings)
    if security is not None:
        kwargs.update(parse_security(security))
    return kwargs


def build_broker(settings: ServiceSettings, *, client_id: str) -> KafkaBroker:
    """The service's FastStream broker, with tracing when the settings turn it on."""
    kafka = settings.kafka
    return KafkaBroker(
        kafka.bootstrap_servers,
        client_id=client_id,
        security=build_security(kafka),
        allow_auto_create_topics=False,
        enable_idempotence=True,
        acks="all",
        max_request_size=kafka.max_message_bytes,
        middlewares=tuple(telemetry_middlewares(settings.app, client_id)),
        # FastStream's logger bypasses our JSON and redaction and is loud at INFO
        # (BENCHMARKS.md, fix 4): ours instead, with the per-message lines at DEBUG.
        logger=logging.getLogger("services.faststream.broker"),
        log_level=logging.DEBUG,
    )


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(topics: TopicSettings, kafka: KafkaSettings) -> list[TopicSpec]:
    inbound = kafka.inbound_partitions
    # Inbound records are deleted by the broker's clock, not the producers': the inbox
    # must outlive them (`inbox_problems`), and a producer's clock cannot stretch that.
    inbound_config = {
        **retention_config(kafka.inbound_retention_days),
        "message.timestamp.type": "LogAppendTime",
    }
    return [
        TopicSpec(topics.bookings, inbound, inbound_config),
        TopicSpec(topics.started, inbound, inbound_config),
        TopicSpec(topics.registered, inbound, inbound_config),
        TopicSpec(topics.commands, inbound, inbound_config),
        TopicSpec(topics.prompts, inbound, retention_config(kafka.prompts_retention_days)),
        TopicSpec(topics.events, inbound, retention_config(kafka.events_retention_days)),
        # Compacted: the last value per key is the current state of that record.
        TopicSpec(
            topics.export,
            inbound,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
        # Compacted and small (one record per group): a reader takes the whole catalog
        # from the start of its one partition.
        TopicSpec(topics.catalog, 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}),
        # A dead letter is the original record plus error headers: the topic takes it
        # even when the original was at the broker's limit.
        TopicSpec(
            topics.dlq,
            3,
            {
                **retention_config(kafka.dlq_retention_days),
                "max.message.bytes": str(dead_letter_request_size(kafka)),
            },
        ),
    ]


def retention_config(days: int) -> dict[str, str]:
    """A deleting topic's configs: records are gone `days` after they were written, give
    or take one segment (`TOPIC_SEGMENT`)."""
    return {"retention.ms": str(_ms(timedelta(days=days))), "segment.ms": str(_ms(TOPIC_SEGMENT))}


def _ms(span: timedelta) -> int:
    return int(span / timedelta(milliseconds=1))


def groups_topic_names(topics: TopicSettings) -> tuple[str, ...]:
    """The topics the groups service reads or writes."""
    return (*topics.inbound, topics.prompts, topics.events, topics.dlq, topics.catalog)


def export_topic_names(topics: TopicSettings) -> tuple[str, ...]:
    """The topics the export service reads or writes."""
    return (topics.events, topics.export, topics.dlq)


async def describe_topic_configs(
    kafka: KafkaSettings, names: Collection[str]
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The effective configs of these topics (set on the topic or the broker's defaults),
    and the topics the broker did not describe, with its error (e.g.
    `TopicAuthorizationFailedError`: no DESCRIBE_CONFIGS)."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for response in responses:
        for error_code, _message, _type, name, entries in response.resources:
            if error_code:
                errors[name] = for_code(error_code).__name__
            else:
                configs[name] = {entry[0]: entry[1] for entry in entries}
    return configs, errors


class TopicsMissing(RuntimeError):
    """Topics a process needs do not exist, and the broker refused to create them."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors  # topic -> the broker's error, e.g. TopicAuthorizationFailedError
        self.names = sorted(errors)
        super().__init__(f"topics missing: {', '.join(self.names)}")


async def ensure_topics(
    topics: TopicSettings, kafka: KafkaSettings, *, needed: Collection[str] | None = None
) -> None:
    """Create the product's missing topics, if this principal may. Existing topics are
    left alone.

    `needed` are the topics this process uses (default: all). When they all exist, nothing
    is created, so a service running under ACLs never needs CREATE (nor DESCRIBE on other
    services' topics, which a principal without it cannot see). Raises `TopicsMissing`
    when some of them still do not exist because the broker refused to create them.
    """
    specs = topic_specs(topics, kafka)
    wanted = set(needed) if needed is not None else {spec.name for spec in specs}
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if wanted <= existing:
            return
        missing = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=kafka.replication_factor,
                topic_configs=spec.config,
            )
            for spec in specs
            if spec.name not in existing
        ]
        response = await admin.create_topics(missing)
        refused = {
            name: for_code(code).__name__
            for name, code, *_ in response.topic_errors
            if code not in (0, TopicAlreadyExistsError.errno)  # another process was first
        }
        created = [t.name for t in missing if t.name not in refused]
        if created:
            log.info("created topics %s", created)
        if refused.keys() & wanted:
            raise TopicsMissing({name: refused[name] for name in refused.keys() & wanted})
        # Metadata for new topics propagates asynchronously; wait until they are visible.
        for _ in range(100):
            if wanted <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topics not visible after creation: {sorted(wanted)}")
    finally:
        await admin.close()


async def wait_for_topics(
    topics: TopicSettings, kafka: KafkaSettings, *, needed: Collection[str]
) -> None:
    """`ensure_topics` for a running service: topics it may not create are waited for
    with backoff (the deployment's migrate step creates them), not a crash loop."""

    def waiting(error: Exception, delay: float) -> None:
        assert isinstance(error, TopicsMissing)
        log.warning(
            "topics %s do not exist and this service may not create them (%s): run "
            "`python -m services.groups migrate`; checking again in %.0f s",
            ", ".join(error.names),
            ", ".join(sorted(set(error.errors.values()))),
            delay,
        )

    await retry_forever(
        lambda: ensure_topics(topics, kafka, needed=needed),
        backoff=Backoff(cap=30.0),
        retry_if=lambda error: isinstance(error, TopicsMissing),
        on_retry=waiting,
    )


# A dead letter is the original record plus error headers, and a record is dead-lettered
# RECORD_TOO_LARGE exactly when it is larger than KAFKA_MAX_MESSAGE_BYTES; the broker
# accepted it, so the broker's own limit (1 MiB by default) is what bounds the copy.
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
DEAD_LETTER_HEADROOM = 64 * 1024


def dead_letter_request_size(settings: KafkaSettings) -> int:
    """The request size a producer that publishes dead letters must allow."""
    return max(settings.max_message_bytes, BROKER_DEFAULT_MAX_MESSAGE_BYTES) + DEAD_LETTER_HEADROOM


_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), the value of
    `aiokafka.partitioner.murmur2`, with whole words unpacked at once, since the
    pure-Python original was a visible share of CPU (BENCHMARKS.md, fix 4)."""
    length = len(data)
    h = _SEED ^ length
    for word in struct.unpack_from(f"<{length >> 2}I", data):
        k = (word * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail, rest = length & 3, length & ~3
    if tail == 3:
        h ^= data[rest + 2] << 16
    if tail >= 2:
        h ^= data[rest + 1] << 8
    if tail:
        h = ((h ^ data[rest]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def default_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition aiokafka's `DefaultPartitioner` gives a keyed record; `partitions` are
    all of the topic's partitions, sorted."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


OutgoingRecord = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]
"""topic, key, value, headers"""


async def publish_in_batches(
    producer: AIOKafkaProducer, records: Sequence[OutgoingRecord]
) -> asyncio.Future[list[Any]]:
    """Hands `records` to the producer as whole per-partition batches; the returned
    future completes once the broker acknowledged every one (and raises if it refused
    any). Records keep their order within each partition, and a keyed record goes to
    the partition `producer.send` would pick."""
    sent = await send_batches(producer, records)
    return asyncio.gather(*(batch.ack for batch in sent))


@dataclass(frozen=True)
class SentBatch:
    positions: list[int]  # of its records in what was sent
    partition: TopicPartition
    ack: asyncio.Future[Any]  # fails when the broker refuses the batch


async def send_batches(
    producer: AIOKafkaProducer,
    records: Sequence[OutgoingRecord],
    *,
    alone: Collection[int] = (),
) -> list[SentBatch]:
    """Hands `records` to the producer as whole per-partition batches, in order within
    each partition (and in that order in the list returned). The records at the
    positions in `alone` go in a batch of their own, so a refusal names exactly them.

    `producer.send` costs a coroutine, a partitioner call and a future per record, which
    was most of a publishing loop's CPU; here a record is only appended to its batch.
    """
    partitions: dict[str, list[int]] = {}
    by_partition: dict[tuple[str, int], list[int]] = {}
    for position, record in enumerate(records):
        topic, key = record[0], record[1]
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        choices = partitions[topic]
        partition = (
            default_partition(key, choices) if key is not None else random.choice(choices)  # noqa: S311 (spreading unkeyed records)
        )
        by_partition.setdefault((topic, partition), []).append(position)
    sent: list[SentBatch] = []
    for (topic, partition), positions in by_partition.items():
        tp = TopicPartition(topic, partition)
        batch, held = producer.create_batch(), list[int]()
        for position in positions:
            if held and position in alone:
                sent.append(await _send_batch(producer, batch, tp, held))
                batch, held = producer.create_batch(), []
            _, key, value, record_headers = records[position]
            headers = list(record_headers)  # aiokafka's batch builder takes a list only
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                sent.append(await _send_batch(producer, batch, tp, held))  # full
                batch, held = producer.create_batch(), []
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            held.append(position)
            if position in alone:
                sent.append(await _send_batch(producer, batch, tp, held))
                batch, held = producer.create_batch(), []
        if held:
            sent.append(await _send_batch(producer, batch, tp, held))
    return sent


async def _send_batch(
    producer: AIOKafkaProducer, batch: Any, tp: TopicPartition, positions: list[int]
) -> SentBatch:
    batch.close()  # complete: no linger waiting for records that will not come
    ack: asyncio.Future[Any] = await producer.send_batch(batch, tp.topic, partition=tp.partition)
    return SentBatch(positions, tp, ack)


class FastDefaultPartitioner:
    """aiokafka's `DefaultPartitioner` (same partition for every key), with the cheaper
    murmur2 above (BENCHMARKS.md, fix 4)."""

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return random.choice(available or all_partitions)  # noqa: S311 (not security)
        return default_partition(key, all_partitions)


def build_producer(
    settings: KafkaSettings,
    *,
    client_id: str,
    max_request_size: int | None = None,
    transactional_id: str | None = None,
) -> AIOKafkaProducer:
    """An idempotent producer with acks=all (a retried send is neither lost nor doubled),
    not started. With `transactional_id` it publishes in transactions, and starting it
    fences any earlier producer with that id (its open transaction is aborted)."""
    return AIOKafkaProducer(
        **client_kwargs(settings),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        # No linger: any linger adds to every prompt's latency, and under load a request
        # in flight fills the next one anyway (BENCHMARKS.md, fix 5).
        linger_ms=0,
        max_batch_size=512 * 1024,
        partitioner=FastDefaultPartitioner(),
        max_request_size=max_request_size or settings.max_message_bytes,
        transactional_id=transactional_id,
    )


async def start_producer(
    settings: KafkaSettings, *, client_id: str, max_request_size: int | None = None
) -> AIOKafkaProducer:
    """`build_producer`, started."""
    producer = build_producer(settings, client_id=client_id, max_request_size=max_request_size)
    await producer.start()
    return producer


# How long the group waits for a member to rejoin after a rebalance began. It must
# outlast a revocation (batches in flight settle, then the last commit): were the group to
# go on without the member, a batch of its could still be published after the new owner's.
REBALANCE_TIMEOUT_MS = 120_000


def manual_batch_subscriber(
    broker: KafkaBroker,
    *topics: str,
    group_id: str,
    max_records: int,
    fetch_min_bytes: int,
    listener: OffsetCommits,
    title: str,
    description: str,
    partition_assignment_strategy: Sequence[type[AbstractPartitionAssignor]] = (
        RoundRobinPartitionAssignor,
    ),
) -> BatchSubscriber:
    """A batch subscriber with the options both services share, replacing FastStream's
    defaults on purpose:

    - `AckPolicy.MANUAL`: the default (ack first) would commit before processing; the
      handler hands its batch to `OffsetCommits` only after it is durably applied.
    - `listener`: the service's `OffsetCommits`, which settles the batches in flight and
      the offsets of the partitions a rebalance takes away before they go (see there),
      with a rebalance timeout that leaves it the time to.
    - The raw record bytes reach the handler undecoded, so a poison record can be
      dead-lettered exactly as it arrived.
    - A batch that waits out an outage keeps the consumer in its group meanwhile.
    - A poll that waits for the first record and returns it at once (`_poll_at_once`):
      FastStream's own sleeps `batch_timeout_ms` after an empty poll, so a record that
      arrived meanwhile waited for the sleep (BENCHMARKS.md, issue 17).
    - aiokafka sends a partition's next fetch only after the fetch in flight returns,
      which waits up to `fetch_max_wait_ms` for data on *its* partitions, so a short wait
      keeps a record on another partition from waiting for it (BENCHMARKS.md, fix 5).
    - `fetch_min_bytes` (`KAFKA_FETCH_MIN_BYTES`, default 1 byte): a larger value makes
      the broker gather that much (up to `fetch_max_wait_ms`) before it answers, fewer
      fetches under load for a wait of up to 20 ms at low load (BENCHMARKS.md, issue 17).
    """
    subscriber = broker.subscriber(
        *topics,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=IDLE_POLL_MS,
        fetch_max_wait_ms=20,
        fetch_min_bytes=fetch_min_bytes,
        auto_offset_reset="earliest",
        # The groups service publishes in Kafka transactions (its outbox relay): never
        # read what an aborted transaction or a fenced relay left on the log.
        isolation_level="read_committed",
        ack_policy=AckPolicy.MANUAL,
        decoder=keep_raw_bytes,
        max_poll_interval_ms=30 * 60 * 1000,
        listener=listener,
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        partition_assignment_strategy=partition_assignment_strategy,
        title=title,
        description=description,
    )
    _poll_at_once(subscriber, max_records)
    return subscriber


# How long a poll waits for a first record: the idle consume loop turns this often, and a
# stop waits at most this long for the loop to notice.
IDLE_POLL_MS = 500


def _poll_at_once(subscriber: BatchSubscriber, max_records: int) -> None:
    """Replaces FastStream's batch poll (`get_msg`), which after an empty `getmany` sleeps
    `batch_timeout_ms` before it polls again: a record arriving during that sleep waited
    for it. Here `getmany` itself waits, and returns as soon as a record is there, with
    whatever has gathered since (up to `max_records`): a lone record is answered at once,
    and batches grow only while records wait for the batches in flight."""

    async def get_msg(consumer: AIOKafkaConsumer) -> tuple[Any, ...]:
        messages = await consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=max_records)
        return tuple(itertools.chain.from_iterable(messages.values()))

    setattr(subscriber, "get_msg", get_msg)  # noqa: B010 (an instance's method, on purpose)


class OffsetCommits(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Commits a batch's offsets in the background, once the batch is durably applied.

    FastStream's `ack()` waits for the group coordinator (BENCHMARKS.md, fix 1) before
    the next batch is fetched, which every record then waits for too. Here the
    consumer goes on at once: the offsets of each applied batch (explicit, never the
    consumer's current position, which may already include the next batch) join a
    pending map, and one commit at a time sends the latest of them, so commits coalesce
    and stay in order. Commits are at least `min_interval_seconds` apart: one per small
    batch meant many commits a second, each a write to the broker's offsets log and work
    for its group coordinator (BENCHMARKS.md, fix 15). A commit that is lost (crash, rebalance) only
    means records after the last commit are delivered again, which both services
    tolerate: the groups service de-duplicates by its inbox, the export re-publishes
    identical records.

    It is also the subscriber's rebalance listener. aiokafka revokes every partition at
    each rebalance (eager protocol) and awaits `on_partitions_revoked` before the member
    rejoins, so until it returns no other member reads those partitions. It lets the
    service's batches in flight settle (`settle`: finished, or stopped so that nothing
    of theirs is written afterwards), commits what they applied while this member still
    owns the partitions, and drops every offset still pending. Offsets belong to a
    generation (`generation`, taken by the handler when a batch starts): `applied`
    ignores a batch of an earlier one, so a batch that ends after its partitions were
    revoked is never committed, and after a move A -> B -> A no stale offset of A's can
    move the group's committed offset back over B's. A batch handled while a revocation
    is under way is not to be applied at all (`generation` is None): after the
    rebalance aiokafka reads every partition again from its committed offset.
    """

    def __init__(
        self,
        *,
        min_interval_seconds: float = 0.1,
        settle: Callable[[], Awaitable[None]] | None = None,
        commit_limit_seconds: float = 10.0,
    ) -> None:
        self._pending: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._min_interval = min_interval_seconds
        self._last_commit = -math.inf
        self._hurry = asyncio.Event()
        self._settle = settle
        self._commit_limit = commit_limit_seconds
        self._generation = 0
        self._revoking = False
        self._stopped = False

    @property
    def generation(self) -> int | None:
        """What a batch starting now belongs to (pass it to `applied`); None while
        partitions are being given up or after `stop`: then the batch is not to be
        applied (it is read again from the committed offset)."""
        return None if self._revoking or self._stopped else self._generation

    def applied(
        self, consumer: AIOKafkaConsumer, records: Sequence[Any], *, generation: int
    ) -> None:
        """These ConsumerRecords are applied: commit up to them, without waiting. Nothing
        of a batch whose partitions were revoked since it started is committed."""
        if generation != self._generation:
            return
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            self._pending[partition] = max(self._pending.get(partition, 0), record.offset + 1)
        self._consumer = consumer
        self._start_committing()

    def _start_committing(self) -> None:
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._commit_pending(), name="offset-commits")

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and self._consumer is not None:
            wait = self._last_commit + self._min_interval - loop.time()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            offsets, self._pending = self._pending, {}
            # A partition that moved to another member is that member's to commit (one
            # unassigned partition would make aiokafka refuse the whole commit).
            assigned = self._consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if not offsets:
                continue
            self._last_commit = loop.time()
            try:
                await self._consumer.commit(offsets)
            except (KafkaError, IllegalStateError) as error:
                # The group is rebalancing or its coordinator is away: keep the offsets
                # for the next applied batch to retry with (no retry loop of its own; a
                # revocation ends this task before it drops what is pending).
                for tp, offset in offsets.items():
                    self._pending[tp] = max(self._pending.get(tp, 0), offset)
                log.info("offset commit postponed: %s", type(error).__name__)
                return

    async def drain(self, limit_seconds: float = 10.0) -> None:
        """Wait until everything marked so far is committed, tried, or `limit_seconds`
        have passed (at shutdown: what is not committed is delivered again). Commits
        due later by the minimum interval go at once."""
        self._start_committing()
        if self._task is not None and not self._task.done():
            self._hurry.set()
            try:
                await asyncio.wait([self._task], timeout=limit_seconds)
            finally:
                self._hurry.clear()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoking = True
        await self._give_up()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoking = False

    async def stop(self) -> None:
        """At shutdown, before the consumer leaves its group: what a revocation does,
        and no batch is applied afterwards."""
        self._stopped = True
        await self._give_up()

    async def _give_up(self) -> None:
        try:
            if self._settle is not None:
                await self._settle()
            await self.drain(self._commit_limit)  # the last commit as the owner
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()  # a commit that did not get through in time
                await asyncio.wait([self._task])
            self._pending = {}
            self._generation += 1
