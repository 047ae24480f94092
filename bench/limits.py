"""What the machine allows without the service: the ceilings the service is compared with.

1. Kafka: a raw aiokafka consume -> produce pipe (no database) on the same broker, shaped
   like the service (batches of up to 500 records, idempotent producer with acks=all,
   offsets committed after each batch's sends are acknowledged), one Python process.
2. PostgreSQL: raw asyncpg inserts of the mix's own record values into an outbox-shaped
   table, 500 rows per transaction, as `executemany` and as `COPY`.
3. Latency floors, one record at a time at a low rate: a Kafka hop (the benchmark's
   producer -> a consumer set as the services' are), the same hop through a Kafka
   transaction read `read_committed` (as the outbox relay publishes), and one small
   PostgreSQL transaction. A prompt through the service pays at least a hop in, a
   transaction and a transactional hop out.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.infra import create_topics
from bench.workload import Record

BATCH = 500


@dataclass(frozen=True)
class KafkaPipeResult:
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds


@dataclass(frozen=True)
class PostgresInsertResult:
    rows: int
    executemany_rate: float
    copy_rate: float
    mean_row_bytes: float


async def kafka_pipe(
    bootstrap: str, records: Sequence[Record], *, suffix: str, partitions: int, limit_s: float
) -> KafkaPipeResult:
    """Pre-fill an input topic with `records`, then time consume -> produce of all of them."""
    source, sink = f"bench-pipe-in.{suffix}", f"bench-pipe-out.{suffix}"
    await create_topics(bootstrap, [source, sink], partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=10,
        max_batch_size=256 * 1024,
    )  # fmt: skip
    await producer.start()
    try:
        pending = [await producer.send(source, r.value, key=r.key) for r in records]
        await asyncio.gather(*pending)
        pipe = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=2
        )
        consumer = AIOKafkaConsumer(
            source,
            bootstrap_servers=bootstrap,
            group_id=f"bench-pipe-{suffix}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH,
        )
        await pipe.start()
        await consumer.start()
        try:
            done = 0
            began = time.monotonic()
            deadline = began + limit_s
            while done < len(records):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kafka pipe: {done}/{len(records)} after {limit_s}s")
                batch = await consumer.getmany(timeout_ms=100, max_records=BATCH)
                futures = [
                    await pipe.send(sink, r.value, key=r.key)
                    for partition in batch.values()
                    for r in partition
                ]
                if futures:
                    await asyncio.gather(*futures)
                    await consumer.commit()
                    done += len(futures)
            return KafkaPipeResult(done, time.monotonic() - began)
        finally:
            await consumer.stop()
            await pipe.stop()
    finally:
        await producer.stop()


_TABLE = """
CREATE TABLE bench_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic varchar(249) NOT NULL,
    key bytea,
    value bytea,
    headers jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


async def postgres_inserts(dsn: str, records: Sequence[Record]) -> PostgresInsertResult:
    """Rows/s of batched inserts (transactions of 500) on one connection."""
    rows = [(f"bench.{r.kind}", r.key, r.value, "[]") for r in records]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(_TABLE)
        insert = "INSERT INTO bench_outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)"
        began = time.monotonic()
        for start in range(0, len(rows), BATCH):
            async with connection.transaction():
                await connection.executemany(insert, rows[start : start + BATCH])
        executemany = len(rows) / (time.monotonic() - began)
        await connection.execute("TRUNCATE bench_outbox")
        copy_rows = rows
        began = time.monotonic()
        for start in range(0, len(copy_rows), BATCH):
            async with connection.transaction():
                await connection.copy_records_to_table(
                    "bench_outbox",
                    records=copy_rows[start : start + BATCH],
                    columns=["topic", "key", "value", "headers"],
                )
        copy = len(rows) / (time.monotonic() - began)
        await connection.execute("DROP TABLE bench_outbox")
    finally:
        await connection.close()
    mean = sum(len(r.value) + len(r.key) for r in records) / max(len(records), 1)
    return PostgresInsertResult(len(rows), executemany, copy, mean)


@dataclass(frozen=True)
class Floor:
    p50_ms: float
    p99_ms: float

    @staticmethod
    def of(samples_ms: Sequence[float]) -> Floor:
        ordered = sorted(samples_ms)
        if not ordered:
            return Floor(math.nan, math.nan)
        return Floor(
            round(ordered[len(ordered) // 2], 2),
            round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 2),
        )


@dataclass(frozen=True)
class LatencyFloors:
    records: int
    per_second: int
    kafka_hop: Floor  # send -> read by a consumer
    transactional_hop: Floor  # begin, send, commit -> read read_committed
    transaction_commit: Floor  # of those, commit_transaction alone
    postgres_transaction: Floor  # BEGIN, an outbox-shaped INSERT, COMMIT

    def as_dict(self) -> dict[str, object]:
        return {k: v.__dict__ if isinstance(v, Floor) else v for k, v in self.__dict__.items()}


async def _hop(
    bootstrap: str, *, transactional: bool, records: int, per_second: int
) -> tuple[list[float], list[float]]:
    """Latencies (ms) of `records` records sent one at a time, and of their commits."""
    topic = f"bench-floor.{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, [topic], 6)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=0 if transactional else 1,  # the relay's / the benchmark client's
        transactional_id=f"bench-floor-{topic}" if transactional else None,
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=20,
        isolation_level="read_committed" if transactional else "read_uncommitted",
        auto_offset_reset="latest",
    )
    await producer.start()
    await consumer.start()
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    commits: list[float] = []

    async def read() -> None:
        while len(latencies) < records:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for partition in batch.values():
                for record in partition:
                    at = sent.pop(record.value or b"", None)
                    if at is not None:
                        latencies.append((now - at) * 1000)

    try:
        await consumer.seek_to_end()
        for partition in consumer.assignment():
            await consumer.position(partition)
        await producer.partitions_for(topic)  # metadata before the first timed send
        reader = asyncio.create_task(read())
        for n in range(records):
            value = f"floor-{n}".encode()
            sent[value] = began = time.perf_counter()
            if transactional:
                await producer.begin_transaction()
                await (await producer.send(topic, value, key=value))
                committing = time.perf_counter()
                await producer.commit_transaction()
                commits.append((time.perf_counter() - committing) * 1000)
            else:
                await producer.send(topic, value, key=value)
            await asyncio.sleep(max(0.0, began + 1 / per_second - time.perf_counter()))
        await asyncio.wait_for(reader, 30)
    finally:
        await consumer.stop()
        await producer.stop()
    return latencies, commits


async def latency_floors(
    bootstrap: str, dsn: str, *, records: int = 200, per_second: int = 50
) -> LatencyFloors:
    """Each floor over `records` records, one at a time, `per_second` a second."""
    hop, _ = await _hop(bootstrap, transactional=False, records=records, per_second=per_second)
    transactional, commits = await _hop(
        bootstrap, transactional=True, records=records, per_second=per_second
    )
    connection = await asyncpg.connect(dsn)
    database: list[float] = []
    try:
        await connection.execute(_TABLE)
        insert = "INSERT INTO bench_outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)"
        await connection.execute(insert, "bench.floor", b"k", b"v", "[]")  # prepared
        for _ in range(records):
            began = time.perf_counter()
            async with connection.transaction():
                await connection.execute(insert, "bench.floor", b"k", b"v" * 400, "[]")
            database.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(1 / per_second)
        await connection.execute("DROP TABLE bench_outbox")
    finally:
        await connection.close()
    return LatencyFloors(
        records,
        per_second,
        Floor.of(hop),
        Floor.of(transactional),
        Floor.of(commits),
        Floor.of(database),
    )
