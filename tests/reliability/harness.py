"""What the fault tests drive: the services as OS processes, the topics, the database.

Every wait here is bounded, and every loop is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devinfra.services import ServiceProcess, free_port, http_json
from services.common.settings import TopicSettings
from services.groups.adapters.orm import inbox, outbox
from tests.e2e.conftest import stack_env
from tests.reliability.model import Input

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = REPO / ".run" / "reliability"
LOG_DIR = RUN_DIR / "logs"


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    describe: Callable[[], object] | None = None,
) -> float:
    """Poll until `condition()` holds; returns the seconds waited. Errors while polling
    (a database that is down) count as "not yet"."""
    started = time.monotonic()
    deadline = started + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if await condition():
                return time.monotonic() - started
        except Exception as error:  # the thing polled may be down for a moment
            last_error = error
        if time.monotonic() > deadline:
            state = f"; last seen: {describe()}" if describe is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}{state}"
            ) from last_error
        await asyncio.sleep(interval)


# -- service processes -----------------------------------------------------------------------


class ServiceHandle:
    """One service as an OS process that a test may kill and start again."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, port_var: str) -> None:
        port = free_port()
        self.process = ServiceProcess(
            module, {**env, port_var: str(port)}, port=port, log_path=log_path
        )
        self.starts = 0
        self.kills = 0
        self.pids: list[int] = []

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def running(self) -> bool:
        return self.process.running()

    async def start(self, *, wait: float = 120.0) -> float:
        """Start and wait until /readyz answers; returns the seconds it took."""
        started = time.monotonic()
        await asyncio.to_thread(self.process.start, wait=wait)
        self.starts += 1
        assert self.process.pid is not None
        self.pids.append(self.process.pid)
        return time.monotonic() - started

    async def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown hook runs."""
        await asyncio.to_thread(self.process.kill)
        self.kills += 1

    async def stop(self) -> None:
        await asyncio.to_thread(self.process.stop)

    def cpu_seconds(self) -> float:
        assert self.pid is not None
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


async def metric(handle: ServiceHandle, name: str, **labels: str) -> float:
    """A sample of the process's `/metrics` (0 when it has none with those labels)."""
    status, body = await asyncio.to_thread(http_json, f"{handle.process.url}/metrics")
    assert status == 200, body
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@dataclass
class Stack:
    """Unique topics, consumer groups and database of one test, and its processes."""

    name: str
    env: dict[str, str]
    topics: TopicSettings
    database_url: str
    bootstrap: str
    engine: AsyncEngine
    log_dir: Path
    groups: ServiceHandle | None = None
    export: ServiceHandle | None = None
    handles: list[ServiceHandle] = field(default_factory=list)

    def topic(self, role: str) -> str:
        return str(getattr(self.topics, role))

    @property
    def groups_group(self) -> str:
        return self.env["GROUPS_CONSUMER_GROUP"]

    @property
    def export_group(self) -> str:
        return self.env["EXPORT_CONSUMER_GROUP"]

    def service(
        self, module: str, extra: dict[str, str] | None = None, *, name: str | None = None
    ) -> ServiceHandle:
        """A handle on `module` with the stack's environment plus `extra`; its log is
        `<name>.log` (default: the module's last part), so several processes of one
        service keep one log each."""
        short = module.rsplit(".", 1)[-1]
        port_var = "GROUPS_HTTP_PORT" if short == "groups" else "EXPORT_HTTP_PORT"
        handle = ServiceHandle(
            module, {**self.env, **(extra or {})}, self.log_dir / f"{name or short}.log", port_var
        )
        self.handles.append(handle)
        return handle

    async def start_groups(self, extra: dict[str, str] | None = None) -> ServiceHandle:
        self.groups = self.service("services.groups", extra)
        await self.groups.start()
        return self.groups

    async def start_export(self, extra: dict[str, str] | None = None) -> ServiceHandle:
        self.export = self.service("services.export", extra)
        await self.export.start()
        return self.export

    # -- database ---------------------------------------------------------------------------
    async def scalar(self, statement: Any) -> Any:
        async with self.engine.connect() as connection:
            return await connection.scalar(statement)

    async def inbox_count(self) -> int:
        return int(await self.scalar(select(func.count()).select_from(inbox)))

    async def outbox_count(self) -> int:
        return int(await self.scalar(select(func.count()).select_from(outbox)))

    async def rows(self, sql: str) -> list[Any]:
        async with self.engine.connect() as connection:
            return list((await connection.execute(text(sql))).all())

    async def settled(self, expected_inbox: int) -> bool:
        """Every expected input applied and every outgoing record published."""
        return await self.inbox_count() >= expected_inbox and await self.outbox_count() == 0


@contextlib.asynccontextmanager
async def open_stack(
    name: str, bootstrap: str, database_url: str, infra: Any
) -> AsyncIterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    env = stack_env(infra, database_url, suffix)
    topics = TopicSettings(**{n: env[f"TOPIC_{n.upper()}"] for n in TopicSettings.model_fields})
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    log_dir = LOG_DIR / safe
    log_dir.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(database_url, pool_pre_ping=True, pool_size=2)
    stack = Stack(safe, env, topics, database_url, bootstrap, engine, log_dir)
    try:
        yield stack
    finally:
        for handle in reversed(stack.handles):
            with contextlib.suppress(Exception):
                await handle.stop()
        await engine.dispose()


async def gate(stack: Stack, expected: int, *, timeout: float = 300.0) -> float:
    """Wait until `expected` distinct inputs are applied; returns the seconds waited."""

    async def applied() -> bool:
        return await stack.inbox_count() >= expected

    return await wait_until(applied, timeout=timeout, what=f"{expected} inputs applied")


async def busy(stack: Stack, *, timeout: float = 300.0) -> None:
    """Wait until the groups service applies something new (it is mid-stream)."""
    before = await stack.inbox_count()

    async def progressed() -> bool:
        return await stack.inbox_count() > before

    await wait_until(progressed, timeout=timeout, interval=0.02, what="the service busy")


async def settle(stack: Stack, expected: int, *, timeout: float = 300.0) -> float:
    """Wait until every input is applied and every outgoing record published."""

    async def settled() -> bool:
        return await stack.settled(expected)

    return await wait_until(settled, timeout=timeout, what="all applied and published")


async def caught_up(
    stack: Stack, group: str, topics: Sequence[str], *, timeout: float = 120.0
) -> dict[str, int]:
    """Wait until `group` committed every record of `topics`; returns the last lag seen
    (all zero), or raises naming the partitions left behind."""
    lag: dict[str, int] = {}

    async def done() -> bool:
        nonlocal lag
        lag = await group_lag(stack.bootstrap, group, topics)
        return not any(lag.values())

    await wait_until(
        done, timeout=timeout, interval=0.5, what=f"{group} caught up", describe=lambda: lag
    )
    return lag


# -- Kafka -----------------------------------------------------------------------------------


class StreamProducer:
    """The test's producer: acks=all and idempotent, so per-partition order is kept."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=30_000,
        )

    async def __aenter__(self) -> StreamProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self, items: Sequence[tuple[str, bytes | None, bytes | None]], *, timeout: float = 120.0
    ) -> list[RecordMetadata]:
        """Send (topic, key, value) in order; returns each record's partition and offset."""

        async def run() -> list[RecordMetadata]:
            futures = [
                await self._producer.send(topic, value=value, key=key)
                for topic, key, value in items
            ]
            return list(await asyncio.gather(*futures))

        return await asyncio.wait_for(run(), timeout)

    async def send_inputs(self, stack: Stack, inputs: Sequence[Input]) -> list[RecordMetadata]:
        return await self.send([(stack.topic(i.role), i.key, i.value) for i in inputs])


async def send_inputs(stack: Stack, inputs: Sequence[Input]) -> list[RecordMetadata]:
    """Send with a producer of its own (the broker may have restarted since the last)."""
    async with StreamProducer(stack.bootstrap) as producer:
        return await producer.send_inputs(stack, inputs)


async def _partitions(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    """The partitions of `topics` (a producer waits for their metadata; a consumer would
    not)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await producer.partitions_for(topic))
        ]
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    timeout: float = 120.0,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on `topic` up to its end offsets at the time of the call, as the
    contract tells consumers to read (`read_uncommitted`: aborted transactions' too)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, [topic])
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end[tp] for tp in partitions):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: read {len(records)} records, not to the end")
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, items in batch.items():
                records.extend(r for r in items if r.offset < end[tp])
    finally:
        await consumer.stop()


async def group_records(
    bootstrap: str,
    group: str,
    partitions: Sequence[TopicPartition],
    *,
    before_commit: bool = False,
) -> dict[TopicPartition, tuple[int, list[ConsumerRecord[bytes, bytes]]]]:
    """Per partition, `group`'s committed offset (0: none) and the records after it, up
    to the end (with `before_commit`, from the beginning), as a `read_committed`
    consumer gets them: the markers of the outbox relay's transactions take offsets but
    are not records, and a consumer that commits "last record + 1" stops before the
    last one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        end = await consumer.end_offsets(list(partitions))
        found: dict[TopicPartition, tuple[int, list[ConsumerRecord[bytes, bytes]]]] = {}
        start: dict[TopicPartition, int] = {}
        for tp in partitions:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else 0
            found[tp] = (offset, [])
            first = 0 if before_commit else offset
            if end[tp] > first:
                start[tp] = first
        if start:
            consumer.assign(list(start))
            for tp, offset in start.items():
                consumer.seek(tp, offset)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                positions = {tp: await consumer.position(tp) for tp in start}
                if all(positions[tp] >= end[tp] for tp in start):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                for tp, items in batch.items():
                    found[tp][1].extend(r for r in items if r.offset < end[tp])
        return found
    finally:
        await consumer.stop()
        await admin.close()


async def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> dict[str, int]:
    """Records not yet committed by `group`, per "topic[partition]" (0 = caught up)."""
    found = await group_records(bootstrap, group, await _partitions(bootstrap, topics))
    return {f"{tp.topic}[{tp.partition}]": len(records) for tp, (_, records) in found.items()}


async def topic_size(bootstrap: str, topic: str) -> int:
    """The sum of the topic's end offsets (records ever written)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, [topic])
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
    finally:
        await admin.close()


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a service log (FastStream's own plain lines are skipped)."""
    import json

    found: list[dict[str, Any]] = []
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def failed_batches(path: Path) -> int:
    """Batches the groups service could not apply as one transaction for a reason other
    than an outage (it then replays them record by record): a bug if it happens."""
    return sum(
        1
        for r in log_records(path)
        if r.get("level") == "ERROR" and str(r.get("logger", "")).endswith(".inbound")
    )


def distinct_by_id(
    records: Sequence[ConsumerRecord[bytes, bytes]],
) -> tuple[dict[str, bytes], int]:
    """Event id -> bytes, and how many ids appeared with two different values (must be 0:
    a re-sent event is the same event, byte for byte)."""
    import json

    seen: dict[str, bytes] = {}
    conflicts = 0
    for record in records:
        assert record.value is not None
        event_id = json.loads(record.value)["id"]
        if event_id in seen and seen[event_id] != record.value:
            conflicts += 1
        seen.setdefault(event_id, record.value)
    return seen, conflicts
