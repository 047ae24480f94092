"""Part 2: the ceiling of the single outbox relay leader on its own.

A fresh migrated groups database gets an outbox of `rows` rows: the prompts and events
the service published in part 1, in their order (repeated as often as needed), with
their keys, values and headers, for fresh topics. One relay (`relay_process`, a process
of its own, so that its CPU is its own) drains it: first a warm-up of 1,000 rows (the
producer's start, its transactional id, the topics' metadata), then the measured window,
from the moment the relay is woken (`wake`) after the rows were committed until it has
published and deleted every row, as its own `groups_outbox_published_total` counts
(which it reports every 20 ms, so nothing else queries the database meanwhile). The
relay deletes a round's rows only after its Kafka transaction committed, so then every
record is readable `read_committed`; afterwards the outbox is checked empty and the
records are read back to confirm it. The reports give the rate over the middle 80 %.

CPU per row: the relay's process, PostgreSQL (postmaster's tree), the broker, and this
process (idle during the window).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import profiling
from bench.groups import migrated_database
from bench.infra import (
    CpuMeter,
    Databases,
    asyncpg_dsn,
    outbox_rows,
    service_env,
    topic_names,
)
from bench.scaleout.service import RELAY_READS, OutputRow, per_1000, read_topics
from devinfra.provider import Infrastructure
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings, TopicSettings
from services.groups.adapters.outbox_relay import OutboxRelay

WARM_ROWS = 1_000
SERVER_SIDE = ("outbox relay", "postgresql", "kafka")


def default_batch_size() -> int | None:
    """The relay's round size unless the service says otherwise (None: not declared)."""
    parameter = inspect.signature(OutboxRelay).parameters.get("batch_size")
    if parameter is None or not isinstance(parameter.default, int):
        return None
    return parameter.default


@dataclass
class RelayCost:
    batch_size: int | None  # None: as the service wires it
    label: str
    rows: int
    complete: bool
    read_back: int
    seconds: float
    rate: float
    steady_rate: float
    cpu_seconds: dict[str, float]
    cpu_ms_per_1000: dict[str, float]  # per 1,000 outbox rows
    relay_cores: float  # CPU of the relay's process / window: 1.0 = one core busy
    machine_cores: float
    relay_reads: dict[str, int] | None  # calls and rows of the relay's reads
    wal_bytes_per_row: float  # PostgreSQL's WAL written in the window, per row
    state: str
    by_kind: dict[str, int] = field(default_factory=dict)
    mean_value_bytes: dict[str, float] = field(default_factory=dict)  # by kind
    statements: dict[str, Any] = field(default_factory=dict)

    @property
    def serial_rows_per_s(self) -> float:
        """The rate if each round's steps (the relay, PostgreSQL, the broker) ran one after
        another, each on a free core: 1 / the sum of their CPU per row. A busy machine
        makes each step wait for a core, which the measured rate shows and this does not."""
        per_row = sum(self.cpu_ms_per_1000.get(g, 0.0) for g in SERVER_SIDE)
        return 1e6 / per_row if per_row else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "serial_rows_per_s": round(self.serial_rows_per_s, 1)}


async def fill_outbox(
    dsn: str, samples: list[OutputRow], topics: TopicSettings, count: int, start: int
) -> dict[str, int]:
    """COPY `count` rows (samples[start:], cycling) in one transaction; the rows by kind."""
    now = datetime.now(UTC)
    by_kind: dict[str, int] = {}
    records = []
    for n in range(count):
        row = samples[(start + n) % len(samples)]
        by_kind[row.kind] = by_kind.get(row.kind, 0) + 1
        records.append((getattr(topics, row.kind), row.key, row.value, row.headers, now))
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.copy_records_to_table(
                "outbox",
                records=records,
                columns=["topic", "key", "value", "headers", "created_at"],
            )
            await connection.execute("ANALYZE outbox")
    finally:
        await connection.close()
    return by_kind


class RelayProcess:
    """`python -m bench.scaleout.relay_process`, driven through its stdin; its reports
    of rows published are kept with the time they arrived."""

    def __init__(self, env: dict[str, str], batch_size: int | None, log_path: Path) -> None:
        self.env = env
        self.batch_size = batch_size
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.published: list[tuple[float, int]] = []  # (perf_counter, rows)
        self.state = "?"
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def count(self) -> int:
        return self.published[-1][1] if self.published else 0

    async def start(self, *, limit_s: float = 90.0) -> None:
        args = [] if self.batch_size is None else ["--batch-size", str(self.batch_size)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.scaleout.relay_process", *args,
                env={**os.environ, **self.env},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )  # fmt: skip
        line = await asyncio.wait_for(self._line(), limit_s)
        if line != "ready":
            raise RuntimeError(f"relay process: {line!r} (see {self.log_path})")
        self._reader = asyncio.create_task(self._read())

    async def _line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        return (await self.process.stdout.readline()).decode().strip()

    async def _read(self) -> None:
        while line := await self._line():
            if line.startswith("published "):
                self.published.append((time.perf_counter(), int(line.split()[1])))
            elif line.startswith("{"):
                self.state = json.loads(line).get("state", "?")
            self._changed.set()

    async def send(self, command: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()

    async def wait_published(self, count: int, *, limit_s: float) -> bool:
        deadline = time.perf_counter() + limit_s
        while self.count < count:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self._reader is None or self._reader.done():
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return True

    def reached_at(self, count: int) -> float | None:
        return next((at for at, done in self.published if done >= count), None)

    async def stop(self, *, limit_s: float = 30.0) -> None:
        """Ends its input: it reports its state and exits."""
        if self.process is None:
            return
        try:
            if self.process.stdin is not None and not self.process.stdin.is_closing():
                self.process.stdin.close()
            await asyncio.wait_for(self.process.wait(), limit_s)
            if self._reader is not None:
                await asyncio.wait_for(self._reader, limit_s)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            if self._reader is not None:
                self._reader.cancel()


async def relay_alone(
    infra: Infrastructure,
    databases: Databases,
    samples: list[OutputRow],
    *,
    rows: int,
    batch_size: int | None,
    partitions: int,
    logdir: Path,
    limit_s: float = 120.0,
) -> RelayCost:
    if not samples:
        raise RuntimeError("no output rows to fill the outbox with")
    url = await migrated_database(databases, "bench_relay")
    dsn = asyncpg_dsn(url)
    topics = topic_names(uuid.uuid4().hex[:8])
    kafka = KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, inbound_partitions=partitions)
    await ensure_topics(topics, kafka)
    env = service_env(infra, url, topics, partitions=partitions)
    size = batch_size or default_batch_size()
    label = f"{size if size else '?'} rows/round" + (" (as wired)" if batch_size is None else "")
    relay = RelayProcess(env, batch_size, logdir / f"relay-{batch_size or 'wired'}.log")
    try:
        await relay.start()
        meter = CpuMeter(
            {"outbox relay": [relay.pid], **_server_groups(infra), "bench client": [os.getpid()]},
            without_children=[os.getpid()],
        )
        await fill_outbox(dsn, samples, topics, WARM_ROWS, 0)
        await relay.send("start")
        if not await relay.wait_published(WARM_ROWS, limit_s=60):
            raise TimeoutError(f"relay warm-up: {relay.count} of {WARM_ROWS} rows in 60 s")
        await profiling.reset_statements(dsn)
        by_kind = await fill_outbox(dsn, samples, topics, rows, WARM_ROWS)
        wal = await profiling.wal_position(dsn)
        meter.start()
        began = time.perf_counter()
        await relay.send("wake")
        complete = await relay.wait_published(WARM_ROWS + rows, limit_s=limit_s)
        ended = time.perf_counter()
        cores = meter.stop()
        wal = await profiling.wal_position(dsn) - wal
        statements = await profiling.statement_summary(dsn, rows)
        reads = await profiling.statement_totals(dsn, RELAY_READS)
        left = await outbox_rows(url)
    finally:
        await relay.stop()
    read = len(await read_topics(infra.kafka_bootstrap, [topics.prompts, topics.events]))
    done = relay.count - WARM_ROWS
    low = relay.reached_at(WARM_ROWS + int(rows * 0.1))
    high = relay.reached_at(WARM_ROWS + int(rows * 0.9))
    steady = 0.8 * rows / (high - low) if low and high and high > low else 0.0
    seconds = ended - began
    return RelayCost(
        batch_size=batch_size,
        label=label,
        rows=rows,
        complete=complete and left == 0 and read == rows + WARM_ROWS,
        read_back=read - WARM_ROWS,
        seconds=round(seconds, 3),
        rate=round(done / seconds, 1),
        steady_rate=round(steady, 1),
        cpu_seconds=meter.cpu_seconds,
        cpu_ms_per_1000=per_1000(meter.cpu_seconds, rows),
        relay_cores=cores["outbox relay"],
        machine_cores=cores["whole machine"],
        relay_reads=reads,
        wal_bytes_per_row=round(wal / rows, 1),
        state=relay.state,
        by_kind=by_kind,
        mean_value_bytes=mean_sizes(samples),
        statements=statements,
    )


def mean_sizes(samples: list[OutputRow]) -> dict[str, float]:
    sizes: dict[str, list[int]] = {}
    for row in samples:
        sizes.setdefault(row.kind, []).append(len(row.value or b""))
    return {kind: round(sum(found) / len(found), 1) for kind, found in sizes.items()}


def _server_groups(infra: Infrastructure) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    if infra.postgres is not None and infra.postgres.pid is not None:
        groups["postgresql"] = [infra.postgres.pid]
    if infra.kafka is not None and infra.kafka.pid is not None:
        groups["kafka"] = [infra.kafka.pid]
    return groups
