"""What the machine allows without the service: the ceilings the service is compared with.

1. Kafka: a raw aiokafka consume -> produce pipe (no database) on the same broker, shaped
   like the service (batches of up to 500 records, idempotent producer with acks=all,
   offsets committed after each batch's sends are acknowledged), one Python process.
2. PostgreSQL: raw asyncpg inserts of the mix's own record values into an outbox-shaped
   table, 500 rows per transaction, as `executemany` and as `COPY`.
"""

from __future__ import annotations

import asyncio
import time
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
