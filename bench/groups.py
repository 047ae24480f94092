"""The groups service as real processes: end-to-end throughput and prompt latency.

Throughput: the mix is pre-generated and pre-serialised, then produced as fast as an
idempotent aiokafka producer (acks=all, linger 10 ms) can. The window runs from the first
send to the moment the last expected output (one prompt per start, one event per command)
has been read back from the prompts and events topics. After it, the consumer group's lag
and the outbox are checked (both must be 0).

Latency: vaccination starts at a fixed offered rate with commands flowing beside them;
each start's latency runs from its *scheduled* send time (so a sender that falls behind
counts against the service, no coordinated omission) to the moment its prompt, matched by
vaccination_id, is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench import profiling
from bench.collector import OutputCollector
from bench.infra import (
    CommitProgress,
    CpuMeter,
    Databases,
    asyncpg_dsn,
    group_lag,
    groups_processes,
    outbox_rows,
    service_env,
    topic_names,
    wait_group_stable,
)
from bench.workload import Mix, Record, Workload
from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess
from services.common.db import create_engine
from services.common.settings import DatabaseSettings, TopicSettings
from services.groups.adapters import migrate


@dataclass
class GroupsStack:
    infra: Infrastructure
    topics: TopicSettings
    database_url: str
    env: dict[str, str]
    processes: list[ServiceProcess]

    @property
    def bootstrap(self) -> str:
        return self.infra.kafka_bootstrap

    @property
    def consumer_group(self) -> str:
        return self.env["GROUPS_CONSUMER_GROUP"]

    def cpu_groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {
            "groups service": [p.pid for p in self.processes if p.pid is not None],
            "bench client": [os.getpid()],
        }
        if self.infra.kafka is not None and self.infra.kafka.pid is not None:
            groups["kafka"] = [self.infra.kafka.pid]
        if self.infra.postgres is not None and self.infra.postgres.pid is not None:
            groups["postgresql"] = [self.infra.postgres.pid]
        return groups


@contextlib.asynccontextmanager
async def groups_stack(
    infra: Infrastructure,
    databases: Databases,
    workload: Workload,
    *,
    processes: int,
    partitions: int,
    logdir: Path,
) -> AsyncIterator[GroupsStack]:
    """A fresh database (migrated, seeded) and topics, and `processes` service processes."""
    topics = topic_names(uuid.uuid4().hex[:8])
    url = await databases.create("bench")
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    await workload.seed(asyncpg_dsn(url))
    env = service_env(infra, url, topics, partitions=partitions)
    with contextlib.ExitStack() as stack:
        started = await asyncio.to_thread(
            stack.enter_context, groups_processes(env, processes, logdir)
        )
        group = env["GROUPS_CONSUMER_GROUP"]
        await wait_group_stable(infra.kafka_bootstrap, group, processes, limit_s=60)
        yield GroupsStack(infra, topics, url, env, started)


def _producer(bootstrap: str, *, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
    )


async def _produce_all(producer: AIOKafkaProducer, topics: TopicSettings, mix: Mix) -> None:
    futures = [await producer.send(r.topic(topics), r.value, key=r.key) for r in mix.records]
    await asyncio.gather(*futures)


async def warm_up(stack: GroupsStack, mix: Mix, *, limit_s: float = 120.0) -> None:
    """Run a small mix through the service (connections, caches) before measuring."""
    wanted = {stack.topics.prompts: mix.prompts, stack.topics.events: mix.events}
    async with OutputCollector(stack.bootstrap, list(wanted)) as collector:
        producer = _producer(stack.bootstrap, linger_ms=5)
        await producer.start()
        try:
            await _produce_all(producer, stack.topics, mix)
        finally:
            await producer.stop()
        if not await collector.wait(wanted, limit_s=limit_s):
            raise TimeoutError(f"warm-up outputs: {collector.counts} of {wanted}")
    lag = await drain(stack, limit_s=limit_s)
    if lag:
        raise TimeoutError(f"warm-up: {lag} records not committed after {limit_s}s")


async def drain(stack: GroupsStack, *, limit_s: float) -> int:
    """Wait until the service has committed everything on its inbound topics; the lag left."""
    deadline = time.monotonic() + limit_s
    while True:
        lag = await group_lag(stack.bootstrap, stack.consumer_group, list(stack.topics.inbound))
        if lag == 0 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(0.2)


@dataclass
class ThroughputResult:
    processes: int
    records: int
    complete: bool
    seconds: float
    produce_seconds: float
    rate: float
    steady_rate: float
    lag_after: int
    outbox_after: int
    rejected: int
    cpu_cores: dict[str, float]
    by_type: dict[str, int]
    statements: dict[str, Any] = field(default_factory=dict)  # pg_stat_statements
    profile: dict[str, Any] | None = None  # py-spy

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


async def throughput(
    stack: GroupsStack,
    mix: Mix,
    *,
    limit_s: float,
    profile_to: Path | None = None,
) -> ThroughputResult:
    """Produce the mix as fast as possible; the window ends when every expected output has
    been read back *and* the consumer group has committed every inbound record."""
    topics = stack.topics
    wanted = {topics.prompts: mix.prompts, topics.events: mix.events}
    meter = CpuMeter(stack.cpu_groups(), without_children=[os.getpid()])
    progress = CommitProgress(stack.bootstrap, stack.consumer_group, list(topics.inbound))
    profiler: profiling.PySpy | None = None
    total = len(mix.records)
    async with OutputCollector(stack.bootstrap, list(wanted)) as collector:
        producer = _producer(stack.bootstrap, linger_ms=10)
        await producer.start()
        await progress.start()
        try:
            await profiling.reset_statements(asyncpg_dsn(stack.database_url))
            if profile_to is not None and stack.processes[0].pid is not None:
                profiler = profiling.PySpy(stack.processes[0].pid, profile_to)
                profiler.start()
            meter.start()
            began = time.perf_counter()
            await _produce_all(producer, topics, mix)
            produced = time.perf_counter()
            deadline = began + limit_s
            outputs_done = await collector.wait(wanted, limit_s=deadline - time.perf_counter())
            committed = await progress.wait(total, limit_s=max(0.0, deadline - time.perf_counter()))
            cpu = meter.stop()
        finally:
            await progress.stop()
            await producer.stop()
            if profiler is not None:
                profiler.stop()
    complete = outputs_done and committed
    committed_at = progress.reached_at(total)
    if complete and committed_at is not None:
        ended = max(collector.last_arrival, committed_at)
        done = total
    else:
        ended = time.perf_counter()
        done = progress.samples[-1][1] if progress.samples else 0
    seconds = ended - began
    # Steady state: the middle 80 % of the inbound records committed.
    low, high = progress.reached_at(int(total * 0.1)), progress.reached_at(int(total * 0.9))
    steady = (0.8 * total / (high - low)) if low and high and high > low else 0.0
    lag = await group_lag(stack.bootstrap, stack.consumer_group, list(topics.inbound))
    return ThroughputResult(
        processes=len(stack.processes),
        records=total,
        complete=complete,
        seconds=round(seconds, 3),
        produce_seconds=round(produced - began, 3),
        rate=round(done / seconds, 1),
        steady_rate=round(steady, 1),
        lag_after=lag,
        outbox_after=await outbox_rows(stack.database_url),
        rejected=collector.rejected,
        cpu_cores=cpu,
        by_type=dict(mix.by_type),
        statements=await profiling.statement_summary(asyncpg_dsn(stack.database_url), total),
        profile=None if profiler is None else profiler.summary(),
    )


_VACCINATION_ID = re.compile(rb'"vaccination_id":"([^"]+)"')
_EVENT_TIME = re.compile(rb'"time":"([^"]+)"')  # the envelope's, before "data"


def _stages(samples: list[tuple[float, ...]]) -> dict[str, dict[str, float]]:
    """p50/p99 of each stage of a prompt's latency, in ms."""
    names = ("start_to_ack", "ack_to_handler", "handler_to_publish", "publish_to_read")
    result: dict[str, dict[str, float]] = {}
    for index, name in enumerate(names):
        ordered = sorted(sample[index] for sample in samples)
        result[name] = {
            "p50_ms": round(percentile(ordered, 0.5), 1),
            "p99_ms": round(percentile(ordered, 0.99), 1),
        }
    return result


@dataclass
class LatencyResult:
    offered_starts_per_s: int
    offered_commands_per_s: int
    seconds: float
    starts: int
    received: int
    achieved_send_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rejected: int
    # Where the time goes (wall clock of one machine): start due -> acknowledged by the
    # broker to the benchmark's producer -> prompt built by the handler (the prompt's
    # CloudEvent time) -> prompt handed to the relay's producer (its Kafka timestamp) ->
    # prompt read by the benchmark.
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "samples_ms"}


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, int(-(-share * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def prompt_latency(
    stack: GroupsStack,
    workload: Workload,
    *,
    starts_per_s: int,
    commands_per_s: int,
    seconds: float,
    drain_s: float,
) -> LatencyResult:
    topics = stack.topics
    tag = f"lat{starts_per_s}-{uuid.uuid4().hex[:6]}"
    # Pre-generate the schedule: (offset from t0, record, vaccination_id or None).
    schedule: list[tuple[float, Record, str | None]] = []
    for n in range(int(starts_per_s * seconds)):
        vaccination_id = f"{tag}-{n}"
        schedule.append((n / starts_per_s, workload.start(vaccination_id), vaccination_id))
    for n in range(int(commands_per_s * seconds)):
        schedule.append((n / commands_per_s, workload.command(), None))
    schedule.sort(key=lambda item: item[0])
    starts = sum(1 for item in schedule if item[2] is not None)
    commands = len(schedule) - starts

    intended: dict[bytes, float] = {}
    acked: dict[bytes, float] = {}
    latencies: list[float] = []
    stages: list[tuple[float, ...]] = []
    wall_offset = time.time() - time.perf_counter()

    def on_record(topic: str, value: bytes, timestamp_ms: int, arrival: float) -> None:
        if topic != topics.prompts:
            return
        match = _VACCINATION_ID.search(value)
        if match is None:
            return
        sent = intended.pop(match.group(1), None)
        ack = acked.pop(match.group(1), None)
        if sent is None:
            return
        latencies.append((arrival - sent) * 1000)
        built = _EVENT_TIME.search(value)
        if built is not None and ack is not None:
            handled = datetime.fromisoformat(built.group(1).decode().replace("Z", "+00:00"))
            handled_at = handled.timestamp() - wall_offset
            published_at = timestamp_ms / 1000 - wall_offset
            stages.append(
                (
                    (ack - sent) * 1000,
                    (handled_at - ack) * 1000,
                    (published_at - handled_at) * 1000,
                    (arrival - published_at) * 1000,
                )
            )

    wanted = {topics.prompts: starts, topics.events: commands}
    async with OutputCollector(stack.bootstrap, list(wanted), on_record=on_record) as collector:
        producer = _producer(stack.bootstrap, linger_ms=1)
        await producer.start()
        try:
            pending: list[asyncio.Future[Any]] = []
            t0 = time.perf_counter() + 0.05
            index = 0
            while index < len(schedule):
                now = time.perf_counter()
                while index < len(schedule) and t0 + schedule[index][0] <= now:
                    offset, record, started_id = schedule[index]
                    future = await producer.send(record.topic(topics), record.value, key=record.key)
                    if started_id is not None:
                        key = started_id.encode()
                        intended[key] = t0 + offset
                        future.add_done_callback(
                            lambda _f, key=key: acked.__setitem__(key, time.perf_counter())
                        )
                    pending.append(future)
                    index += 1
                if index < len(schedule):
                    await asyncio.sleep(max(0.0, min(0.002, t0 + schedule[index][0] - now)))
            sent_seconds = time.perf_counter() - t0
            await asyncio.gather(*pending)
            await collector.wait(wanted, limit_s=drain_s)
        finally:
            await producer.stop()
    ordered = sorted(latencies)
    # A prompt that never arrived (within the drain time) counts as infinitely late.
    padded = ordered + [math.inf] * (starts - len(ordered))
    return LatencyResult(
        offered_starts_per_s=starts_per_s,
        offered_commands_per_s=commands_per_s,
        seconds=seconds,
        starts=starts,
        received=len(ordered),
        achieved_send_rate=round(len(schedule) / sent_seconds, 1),
        p50_ms=round(percentile(padded, 0.50), 1),
        p95_ms=round(percentile(padded, 0.95), 1),
        p99_ms=round(percentile(padded, 0.99), 1),
        max_ms=round(padded[-1], 1) if padded else math.nan,
        rejected=collector.rejected,
        stages=_stages(stages) if stages else {},
        samples_ms=ordered,
    )
