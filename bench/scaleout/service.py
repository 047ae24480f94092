"""Part 1: CPU per record of each part while one groups service process runs the
standard mix flat out.

`bench.groups.throughput` runs the mix (as `python -m bench` does); a `CpuMeter` around
it gives the CPU seconds each group of processes used in that window: the service
process, PostgreSQL (the postmaster's tree, backends and workers that ended included),
the broker's JVM and this process (the producer of the load and the reader of the
outputs). The window also holds the throughput run's set-up and checks (a consumer's
start, two short queries), a little more than the run's own.

Afterwards the prompts and events the service published are read back: they are the
rows the relay measurement fills its outbox with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from bench import profiling
from bench.groups import client_gc_quiet, groups_stack, throughput, warm_up
from bench.infra import CpuMeter, Databases, asyncpg_dsn, partitions_of
from bench.workload import Mix, Workload
from devinfra.provider import Infrastructure
from services.groups.adapters.outbox import encode_headers

# The relay's reads of the outbox (pg_stat_statements text): their count and rows give
# the rows per round.
RELAY_READS = "%SELECT id, topic, key, value%FROM outbox%"


@dataclass(frozen=True)
class OutputRow:
    """An outbox row as the service writes it; `kind` names its topic setting."""

    kind: str  # prompts | events
    key: bytes | None
    value: bytes | None
    headers: str  # the outbox's JSONB text


@dataclass
class ServiceCost:
    processes: int
    records: int  # inbound
    outputs: int  # prompts + events the records cause
    complete: bool
    rate: float
    steady_rate: float
    window_s: float
    cpu_seconds: dict[str, float]
    cpu_ms_per_1000: dict[str, float]  # per 1,000 inbound records
    ended_cpu_seconds: dict[str, float]  # of processes that ended in the window
    relay_reads: dict[str, int] | None  # calls and rows of the relay's reads
    wal_bytes_per_record: float  # PostgreSQL's WAL written in the window, per record
    throughput: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def per_1000(cpu_seconds: dict[str, float], count: int) -> dict[str, float]:
    """CPU-ms per 1,000 of `count` (= CPU-us per one)."""
    return {name: round(seconds * 1e6 / max(count, 1), 1) for name, seconds in cpu_seconds.items()}


async def measure_service(
    infra: Infrastructure,
    databases: Databases,
    workload: Workload,
    warm: Mix,
    mix: Mix,
    *,
    processes: int,
    partitions: int,
    logdir: Path,
) -> tuple[ServiceCost, list[OutputRow], dict[str, int]]:
    """The cost, the outputs published (for the relay's outbox), and the partitions of
    each inbound topic as created."""
    async with groups_stack(
        infra, databases, workload, processes=processes, partitions=partitions, logdir=logdir
    ) as stack:
        await warm_up(stack, warm)
        meter = CpuMeter(stack.cpu_groups(), without_children=[os.getpid()])
        dsn = asyncpg_dsn(stack.database_url)
        wal = await profiling.wal_position(dsn)
        with client_gc_quiet():
            meter.start()
            result = await throughput(stack, mix, limit_s=max(120.0, len(mix.records) / 50))
            meter.stop()
        wal = await profiling.wal_position(dsn) - wal
        # throughput() reset the statistics at its start.
        reads = await profiling.statement_totals(dsn, RELAY_READS)
        inbound = await partitions_of(stack.bootstrap, stack.topics.inbound)
        counts = {
            topic: sum(1 for p in inbound if p.topic == topic) for topic in stack.topics.inbound
        }
        outputs = await read_outputs(
            stack.bootstrap, {"prompts": stack.topics.prompts, "events": stack.topics.events}
        )
    cost = ServiceCost(
        processes=processes,
        records=result.records,
        outputs=mix.prompts + mix.events,
        complete=result.complete and result.lag_after == 0 and result.outbox_after == 0,
        rate=result.rate,
        steady_rate=result.steady_rate,
        window_s=round(meter.wall, 3),
        cpu_seconds=meter.cpu_seconds,
        cpu_ms_per_1000=per_1000(meter.cpu_seconds, result.records),
        ended_cpu_seconds=meter.ended_seconds,
        relay_reads=reads,
        wal_bytes_per_record=round(wal / max(result.records, 1), 1),
        throughput=result.as_dict(),
    )
    return cost, outputs, counts


async def read_topics(
    bootstrap: str, topics: Sequence[str], *, limit_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topics` a `read_committed` reader sees, from the start to the end
    they had when it started."""
    partitions = await partitions_of(bootstrap, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + limit_s
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {', '.join(topics)} back: {len(found)} read")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


async def read_outputs(bootstrap: str, topics: dict[str, str]) -> list[OutputRow]:
    """The records of `topics` (kind -> topic) as outbox rows, in the order they were
    published (by timestamp)."""
    kinds = {topic: kind for kind, topic in topics.items()}
    records = sorted(await read_topics(bootstrap, list(topics.values())), key=lambda r: r.timestamp)
    return [
        OutputRow(
            kinds[record.topic],
            record.key,
            record.value,
            orjson.dumps(encode_headers(list(record.headers))).decode(),
        )
        for record in records
    ]
