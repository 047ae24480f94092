"""The outbox relay under faults, with the groups service as its own OS process(es).

The test writes outbox rows itself, as the service's transactions do (a stream of
numbered versions per key), so every record's place is known; a `read_committed`
consumer, as the contract tells consumers to read, records when each arrives.

- A row the topic refuses for good (larger than its max.message.bytes) in the middle of
  the stream: it is parked, every other row is published once, in order, and late by
  less than a second; no row is sent more than twice, aborted attempts included.
- Two service processes; the relay's leader is frozen (SIGSTOP) until the other takes
  over and publishes newer versions, then woken (SIGCONT): no record lands after a newer
  one of its key, nothing is lost.
- The broker stopped and started in the middle of the stream, two processes again
  (the lease passes on while the leader waits for the broker): per-key order kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devinfra.provider import Infrastructure
from devinfra.services import http_json
from services.groups.adapters.orm import outbox, outbox_parked
from tests.kafka_tools import TopicCollector
from tests.reliability.conftest import Check, require_local
from tests.reliability.harness import ServiceHandle, Stack, read_topic, wait_until

LEASE_SECONDS = 3.0
KEYS = 40


@dataclass
class Inserted:
    key: str
    seq: int
    committed_at: float


@dataclass
class OutboxStream:
    """Writes numbered versions per key into the outbox, a transaction at a time."""

    engine: AsyncEngine
    topic: str
    rows_per_transaction: int = 40
    interval: float = 0.04
    value_bytes: int = 300
    inserted: dict[str, Inserted] = field(default_factory=dict)  # record id -> what
    _next_seq: Counter[str] = field(default_factory=Counter)
    _task: asyncio.Task[None] | None = None
    _rotation: int = 0
    # One writer at a time, as the service's per-customer locks make it: versions of a
    # key get their outbox ids in version order.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _row(self, key: str, padding: int) -> tuple[dict[str, Any], str, int]:
        seq = self._next_seq[key]
        self._next_seq[key] += 1
        record_id = uuid.uuid4().hex
        value = json.dumps({"id": record_id, "key": key, "seq": seq, "pad": "p" * padding})
        return (
            {"topic": self.topic, "key": key.encode(), "value": value.encode(), "headers": []},
            record_id,
            seq,
        )

    async def write(self, count: int, *, padding: int | None = None) -> list[str]:
        async with self._lock:
            return await self._write(count, padding)

    async def _write(self, count: int, padding: int | None) -> list[str]:
        rows, made = [], []
        for _ in range(count):
            key = f"key-{self._rotation % KEYS:03d}"
            self._rotation += 1
            row, record_id, seq = self._row(key, self.value_bytes if padding is None else padding)
            rows.append(row)
            made.append((record_id, key, seq))
        async with self.engine.begin() as connection:
            await connection.execute(insert(outbox), rows)
        now = time.monotonic()
        for record_id, key, seq in made:
            self.inserted[record_id] = Inserted(key, seq, now)
        return [record_id for record_id, _, _ in made]

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the database is not what is tested
                await self.write(self.rows_per_transaction)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Arrivals:
    """The decoded records a `TopicCollector` has read, with when each arrived (decoded
    once, as they come: the tests poll this while thousands arrive)."""

    def __init__(self, collector: TopicCollector) -> None:
        self.collector = collector
        self._values: list[tuple[float, dict[str, Any]]] = []
        self._ids: set[str] = set()

    def values(self) -> list[tuple[float, dict[str, Any]]]:
        c = self.collector
        for at, record in zip(
            c.arrived_at[len(self._values) :], c.records[len(self._values) :], strict=True
        ):
            value = json.loads(record.value)
            self._values.append((at, value))
            self._ids.add(value["id"])
        return self._values

    def ids(self) -> set[str]:
        self.values()
        return self._ids


def order_figures(arrivals: Arrivals, stream: OutboxStream) -> dict[str, int]:
    """Per key: records whose first arrival came after a newer version's ("out of
    order", must be 0), copies of records seen before (at-least-once re-sends), and
    inserted records never seen."""
    newest: dict[str, int] = {}
    seen: set[str] = set()
    out_of_order = copies = 0
    for _, value in arrivals.values():
        if value["id"] in seen:
            copies += 1
            continue
        seen.add(value["id"])
        if value["seq"] < newest.get(value["key"], -1):
            out_of_order += 1
        newest[value["key"]] = max(newest.get(value["key"], -1), value["seq"])
    missing = sum(1 for record_id in stream.inserted if record_id not in seen)
    return {"out_of_order": out_of_order, "copies": copies, "missing": missing}


@contextlib.asynccontextmanager
async def arrivals_on(stack: Stack, topic: str) -> AsyncIterator[Arrivals]:
    """A `read_committed` reader from the topic's beginning that times arrivals closely."""
    async with TopicCollector(stack.bootstrap, topic, fetch_max_wait_ms=20) as collector:
        yield Arrivals(collector)


@contextlib.asynccontextmanager
async def stream_engine(stack: Stack) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.database_url, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def groups_process(stack: Stack, name: str) -> ServiceHandle:
    """A groups service process of its own (own log), with a short relay lease."""
    handle = ServiceHandle(
        "services.groups",
        {**stack.env, "GROUPS_RELAY_LEASE_SECONDS": str(LEASE_SECONDS)},
        stack.log_dir / f"{name}.log",
        "GROUPS_HTTP_PORT",
    )
    stack.handles.append(handle)
    await handle.start()
    return handle


async def leader_pid(stack: Stack) -> int | None:
    """The OS process id in the relay lease's holder (`host:pid:nonce`), if unexpired."""
    rows = await stack.rows(
        "SELECT holder FROM leases WHERE name = 'outbox-relay' AND expires_at > now()"
    )
    return int(rows[0].holder.split(":")[-2]) if rows else None


async def drained(stack: Stack, arrivals: Arrivals, stream: OutboxStream) -> None:
    async def done() -> bool:
        return await stack.outbox_count() == 0 and stream.inserted.keys() <= arrivals.ids()

    await wait_until(done, timeout=120, what="every row published and read")


async def read_raw(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record on the topic, aborted transactions' included (`read_uncommitted`)."""
    records = await read_topic(bootstrap, topic, isolation_level="read_uncommitted")
    return [json.loads(r.value) for r in records]


def relay_log_lines(handle: ServiceHandle) -> list[str]:
    from tests.reliability.harness import log_records

    return [
        str(r.get("msg", ""))
        for r in log_records(handle.log_path)
        if str(r.get("logger", "")).endswith("outbox_relay")
    ]


async def test_a_refused_row_is_parked_and_the_others_flow(stack: Stack, check: Check) -> None:
    topic = stack.topics.prompts
    groups = await groups_process(stack, "groups")
    async with stream_engine(stack) as engine, arrivals_on(stack, topic) as arrivals:
        stream = OutboxStream(engine, topic)
        stream.start()
        await asyncio.sleep(3.0)
        # Larger than the topic's max.message.bytes (1 MiB), which the relay's producer
        # (sized for dead letters) still sends: the broker refuses it for good.
        (large,) = await stream.write(1, padding=1_048_576 + 16 * 1024)
        large_at = stream.inserted[large].committed_at
        await asyncio.sleep(3.0)
        await stream.stop()
        del stream.inserted[large]  # not expected on the topic
        await drained(stack, arrivals, stream)
        raw = await read_raw(stack.bootstrap, topic)
        parked = await stack.rows("SELECT id, error FROM outbox_parked")
        _, health = await asyncio.to_thread(http_json, f"{groups.process.url}/healthz")

    arrived = {}
    for at, value in arrivals.values():
        arrived.setdefault(value["id"], at)
    delays = {rid: arrived[rid] - row.committed_at for rid, row in stream.inserted.items()}
    around = [d for rid, d in delays.items() if large_at <= stream.inserted[rid].committed_at]
    around = around[: 3 * 40]  # the rows written within ~0.1 s after the refused one
    usual = [d for rid, d in delays.items() if stream.inserted[rid].committed_at < large_at - 0.5]
    raw_copies = Counter(value["id"] for value in raw)
    figures = order_figures(arrivals, stream)
    check.record(
        "relay_refused_row",
        "Outbox row refused for good by the broker (too large) mid-stream",
        summary={
            "inputs": len(stream.inserted) + 1,
            "faults": 1,
            "bad_inputs": 1,
            "lost": figures["missing"],
            "duplicated_effects": figures["copies"],
        },
        rows_parked=len(parked),
        parked_error=[p.error for p in parked],
        copies_published_per_row_at_most_including_aborted=max(raw_copies.values()),
        copies_published_per_row_at_most_read_committed=max(
            Counter(value["id"] for _, value in arrivals.values()).values()
        ),
        other_rows_delay_after_the_refusal_max_s=round(max(around), 2),
        other_rows_delay_usual_median_p99_s=[
            round(statistics.median(usual), 3),
            round(statistics.quantiles(usual, n=100)[98], 3),
        ],
        records_out_of_order=figures["out_of_order"],
        healthz_outbox=health["outbox"],
    )
    assert [p.error for p in parked] == ["MessageSizeTooLargeError"]
    assert figures == {"out_of_order": 0, "copies": 0, "missing": 0}, figures
    assert max(raw_copies.values()) <= 2, raw_copies.most_common(3)
    assert large not in raw_copies or raw_copies[large] <= 2
    assert max(around) < 1.0, f"rows after the refused one waited {max(around):.2f}s"
    assert health["outbox"]["parked_rows"] == 1
    assert groups.running()


async def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


async def wake(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


async def test_a_frozen_leader_is_replaced_and_nothing_it_had_in_flight_lands_after(
    stack: Stack, check: Check
) -> None:
    topic = stack.topics.prompts
    first = await groups_process(stack, "groups-a")
    second = await groups_process(stack, "groups-b")
    handles = {first.pid: first, second.pid: second}
    cycles: list[dict[str, Any]] = []
    async with stream_engine(stack) as engine, arrivals_on(stack, topic) as arrivals:
        stream = OutboxStream(engine, topic)
        stream.start()
        # Until a freeze caught the leader with a transaction open (its woken producer is
        # fenced), at least twice, at most eight times.
        while len(cycles) < 2 or (
            len(cycles) < 8 and not any(c["fenced_on_waking"] for c in cycles)
        ):
            await asyncio.sleep(1.0)
            frozen = await leader_pid(stack)
            assert frozen in handles, (frozen, handles)
            await freeze_mid_round(stack, stream, frozen)
            frozen_at = time.monotonic()
            logged = len(relay_log_lines(handles[frozen]))
            try:
                # A version written after the freeze, published by the other process.
                (marker,) = await stream.write(1)

                async def taken_over(pid: int = frozen) -> bool:
                    return await leader_pid(stack) not in (None, pid)

                await wait_until(taken_over, timeout=60, what="another process leading")
                lease_taken = time.monotonic() - frozen_at

                async def published(record_id: str = marker) -> bool:
                    return record_id in arrivals.ids()

                await wait_until(published, timeout=60, what="newer versions published")
                takeover = time.monotonic() - frozen_at
                await asyncio.sleep(1.0)  # newer versions flow past the frozen leader
            finally:
                await wake(frozen)
            await asyncio.sleep(2.0)  # the woken one finds it no longer leads
            woken = relay_log_lines(handles[frozen])[logged:]
            cycles.append(
                {
                    "lease_taken_s": round(lease_taken, 1),
                    "publishing_again_s": round(takeover, 1),
                    "fenced_on_waking": any("ProducerFenced" in line for line in woken),
                    "woken_relay_said": sorted({_gist(line) for line in woken}),
                }
            )
        await stream.stop()
        await drained(stack, arrivals, stream)
        raw = await read_raw(stack.bootstrap, topic)

    figures = order_figures(arrivals, stream)
    aborted = len(raw) - len(arrivals.values())
    check.record(
        "relay_frozen_leader",
        "Outbox relay leader frozen (SIGSTOP) until another takes over, then woken",
        summary={
            "inputs": len(stream.inserted),
            "faults": len(cycles),
            "bad_inputs": 0,
            "lost": figures["missing"],
            "duplicated_effects": 0,
        },
        lease_seconds=LEASE_SECONDS,
        takeovers=[
            f"lease taken {c['lease_taken_s']} s after the freeze, newer versions published "
            f"after {c['publishing_again_s']} s, the woken relay: "
            + " / ".join(c["woken_relay_said"])
            for c in cycles
        ],
        freezes_with_a_transaction_open=sum(1 for c in cycles if c["fenced_on_waking"]),
        records_of_aborted_transactions_never_visible=aborted,
        records_out_of_order=figures["out_of_order"],
        records_resent_copies=figures["copies"],
    )
    assert figures["out_of_order"] == 0, figures
    assert figures["missing"] == 0, figures
    assert any(c["fenced_on_waking"] for c in cycles), cycles
    assert all(c["publishing_again_s"] < LEASE_SECONDS + 10 for c in cycles), cycles
    assert first.running() and second.running()


async def freeze_mid_round(stack: Stack, stream: OutboxStream, pid: int) -> None:
    """Write a burst (several rounds back to back, of larger rows) and freeze `pid` once
    the first of them is deleted, i.e. committed: it is then sending the next."""
    burst = 3000
    async with stack.engine.connect() as connection:

        async def left() -> int:
            return int(await connection.scalar(select(func.count()).select_from(outbox)) or 0)

        before = await left()
        await stream.write(burst, padding=1500)
        for _ in range(5000):  # at most ~10 s
            if await left() <= before + burst - 400:
                break
            await asyncio.sleep(0.002)
    await freeze(pid)


def _gist(line: str) -> str:
    """A relay log line without its figures (delays, terms)."""
    return line.split(";")[0].split(" (lease term")[0]


async def test_a_broker_outage_mid_stream_keeps_per_key_order(
    stack: Stack, infra: Infrastructure, check: Check
) -> None:
    require_local(infra.kafka, "Kafka")
    kafka = infra.kafka
    assert kafka is not None
    topic = stack.topics.prompts
    first = await groups_process(stack, "groups-a")
    second = await groups_process(stack, "groups-b")
    async with stream_engine(stack) as engine, arrivals_on(stack, topic) as arrivals:
        stream = OutboxStream(engine, topic)
        stream.start()
        await asyncio.sleep(3.0)
        leader_before = await leader_pid(stack)
        await kafka.astop()
        stopped = time.monotonic()
        await asyncio.sleep(5.0)  # longer than the lease: the leader waits for the broker
        await kafka.astart()
        down = time.monotonic() - stopped
        back = time.monotonic()
        await asyncio.sleep(3.0)
        await stream.stop()
        await drained(stack, arrivals, stream)
        leader_after = await leader_pid(stack)
        parked = await stack.scalar(select(func.count()).select_from(outbox_parked))

    figures = order_figures(arrivals, stream)
    arrived: dict[str, float] = {}
    for at, value in arrivals.values():
        arrived.setdefault(value["id"], at)
    during = [
        arrived[rid] for rid, row in stream.inserted.items() if stopped <= row.committed_at <= back
    ]
    check.record(
        "relay_broker_restart",
        "Kafka broker stopped and started under a stream of versions, two relays",
        summary={
            "inputs": len(stream.inserted),
            "faults": 1,
            "bad_inputs": 0,
            "lost": figures["missing"],
            "duplicated_effects": 0,
        },
        broker_down_s=round(down, 1),
        rows_written_while_down=len(during),
        all_of_them_read_s_after_the_start=round(max(during) - back, 1),
        leader_changed=leader_before != leader_after,
        records_out_of_order=figures["out_of_order"],
        records_resent_copies=figures["copies"],
        rows_parked=parked,
    )
    assert figures["out_of_order"] == 0 and figures["missing"] == 0, figures
    assert parked == 0
    assert first.running() and second.running()
