"""A service as real processes: end-to-end throughput and prompt latency, measured from
outside (the groups service, and the plain FastStream baseline of `bench.versus`).

Throughput: the mix is pre-generated and pre-serialised, then produced as fast as an
idempotent aiokafka producer (acks=all, linger 10 ms) can. The window runs from the first
send to the moment the last expected output (one prompt per start, one event per command)
has been read back from the prompts and events topics, and (`until="committed"`, the
groups service's own phase) the consumer group has committed every inbound record. After
it, the consumer group's lag and the outbox are checked (both must be 0).

Latency: vaccination starts at a fixed offered rate with commands flowing beside them;
each start's latency runs from its *scheduled* send time (so a sender that falls behind
counts against the service, no coordinated omission) to the moment its prompt, matched by
vaccination_id, is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer

from bench import profiling
from bench.collector import OutputCollector
from bench.infra import (
    CommitProgress,
    CpuMeter,
    Databases,
    asyncpg_dsn,
    group_lag,
    outbox_rows,
    service_env,
    service_processes,
    topic_names,
    wait_group_stable,
)
from bench.workload import Mix, Record, Workload
from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess
from services.common.db import create_engine
from services.common.settings import DatabaseSettings, TopicSettings
from services.groups.adapters import migrate


@contextlib.contextmanager
def client_gc_quiet() -> Iterator[None]:
    """Keeps this process's garbage collector out of a measured phase.

    This process produces the load and reads the outputs; it holds the pre-generated
    mixes, and its full collections paused it for 80-420 ms (measured with
    `gc.callbacks` in a full run, several inside the latency phases), which delayed
    sends and reads and was counted against the service. Reference counting still frees
    almost everything during a phase; what is left is collected between phases."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass
class ServiceStack:
    """Service processes in one consumer group, with their database and topics."""

    name: str  # as the CPU figures name it: "groups service", "plain service"
    infra: Infrastructure
    topics: TopicSettings
    database_url: str
    consumer_group: str
    processes: list[ServiceProcess]
    has_outbox: bool = True
    inbound_topics: tuple[str, ...] | None = None  # None: every inbound topic of `topics`

    @property
    def bootstrap(self) -> str:
        return self.infra.kafka_bootstrap

    @property
    def inbound(self) -> list[str]:
        return list(self.inbound_topics or self.topics.inbound)

    def cpu_groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {
            self.name: [p.pid for p in self.processes if p.pid is not None],
            "bench client": [os.getpid()],
        }
        if self.infra.kafka is not None and self.infra.kafka.pid is not None:
            groups["kafka"] = [self.infra.kafka.pid]
        if self.infra.postgres is not None and self.infra.postgres.pid is not None:
            groups["postgresql"] = [self.infra.postgres.pid]
        return groups


async def migrated_database(databases: Databases, name: str) -> str:
    """A fresh database with the groups service's schema; its URL."""
    url = await databases.create(name)
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return url


@contextlib.asynccontextmanager
async def groups_stack(
    infra: Infrastructure,
    databases: Databases,
    workload: Workload,
    *,
    processes: int,
    partitions: int,
    logdir: Path,
) -> AsyncIterator[ServiceStack]:
    """A fresh database (migrated, seeded) and topics, and `processes` service processes."""
    topics = topic_names(uuid.uuid4().hex[:8])
    url = await migrated_database(databases, "bench")
    await workload.seed(asyncpg_dsn(url))
    env = service_env(infra, url, topics, partitions=partitions)
    with contextlib.ExitStack() as stack:
        started = await asyncio.to_thread(
            stack.enter_context,
            service_processes(
                "services.groups", env, processes, logdir, port_env="GROUPS_HTTP_PORT"
            ),
        )
        group = env["GROUPS_CONSUMER_GROUP"]
        await wait_group_stable(infra.kafka_bootstrap, group, processes, limit_s=60)
        yield ServiceStack("groups service", infra, topics, url, group, started)


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


async def warm_up(stack: ServiceStack, mix: Mix, *, limit_s: float = 120.0) -> None:
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


async def drain(stack: ServiceStack, *, limit_s: float) -> int:
    """Wait until the service has committed everything on its inbound topics; the lag left."""
    deadline = time.monotonic() + limit_s
    while True:
        lag = await group_lag(stack.bootstrap, stack.consumer_group, stack.inbound)
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
    outbox_after: int | None  # None: the service has no outbox
    rejected: int
    cpu_cores: dict[str, float]
    by_type: dict[str, int]
    until: str = "committed"  # what ends the window (see `throughput`)
    statements: dict[str, Any] = field(default_factory=dict)  # pg_stat_statements
    profile: dict[str, Any] | None = None  # py-spy

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def steady_rate(reached_at: Callable[[int], float | None], count: int, scale: float = 1.0) -> float:
    """Per second over the middle 80 % of `count` (when the 10 % and the 90 % mark were
    reached), times `scale`; 0 when the marks are missing or equal."""
    low, high = reached_at(int(count * 0.1)), reached_at(int(count * 0.9))
    if low is None or high is None or high <= low:
        return 0.0
    return 0.8 * count * scale / (high - low)


async def throughput(
    stack: ServiceStack,
    mix: Mix,
    *,
    limit_s: float,
    until: Literal["committed", "outputs"] = "committed",
    profile_to: Path | None = None,
) -> ThroughputResult:
    """Produce the mix as fast as possible; the window ends when every expected output has
    been read back and, with `until="committed"`, the consumer group has committed every
    inbound record. `"outputs"` ends it at the last output alone: what the comparison
    uses for both services, since the plain one commits its offsets on a 5 s timer that
    says nothing of its work. Steady state: the middle 80 % of the records committed, or
    of the outputs read."""
    topics = stack.topics
    wanted = {topics.prompts: mix.prompts, topics.events: mix.events}
    expected = mix.prompts + mix.events
    meter = CpuMeter(stack.cpu_groups(), without_children=[os.getpid()])
    progress = CommitProgress(stack.bootstrap, stack.consumer_group, stack.inbound)
    profiler: profiling.PySpy | None = None
    total = len(mix.records)
    committed = True
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
            if until == "committed":
                remaining = max(0.0, deadline - time.perf_counter())
                committed = await progress.wait(total, limit_s=remaining)
            cpu = meter.stop()
        finally:
            await progress.stop()
            await producer.stop()
            if profiler is not None:
                profiler.stop()
    complete = outputs_done and committed
    committed_at = progress.reached_at(total)
    if until == "outputs":
        read = sum(collector.counts.values())
        ended = collector.last_arrival if complete else time.perf_counter()
        done = total if complete else round(total * read / max(expected, 1))
        steady = steady_rate(
            lambda n: collector.reached_at(None, n), expected, total / max(expected, 1)
        )
    else:
        if complete and committed_at is not None:
            ended = max(collector.last_arrival, committed_at)
            done = total
        else:
            ended = time.perf_counter()
            done = progress.samples[-1][1] if progress.samples else 0
        steady = steady_rate(progress.reached_at, total)
    seconds = ended - began
    lag = await group_lag(stack.bootstrap, stack.consumer_group, stack.inbound)
    return ThroughputResult(
        processes=len(stack.processes),
        records=total,
        complete=complete,
        seconds=round(seconds, 3),
        produce_seconds=round(produced - began, 3),
        rate=round(done / seconds, 1),
        steady_rate=round(steady, 1),
        lag_after=lag,
        outbox_after=await outbox_rows(stack.database_url) if stack.has_outbox else None,
        rejected=collector.rejected,
        cpu_cores=cpu,
        by_type=dict(mix.by_type),
        until=until,
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
    # CloudEvent time) -> prompt handed to the producer that publishes it (its Kafka
    # timestamp; the relay's, or FastStream's in the plain service) -> prompt read by the
    # benchmark.
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
    stack: ServiceStack,
    workload: Workload,
    *,
    starts_per_s: int,
    commands_per_s: int,
    seconds: float,
    drain_s: float,
    command: Callable[[], Record] | None = None,
) -> LatencyResult:
    """Starts at `starts_per_s` and commands (`command()`, by default the mix's command
    types) at `commands_per_s` for `seconds`, then up to `drain_s` for the outputs."""
    topics = stack.topics
    command = command or workload.command
    tag = f"lat{starts_per_s}-{uuid.uuid4().hex[:6]}"
    # Pre-generate the schedule: (offset from t0, record, vaccination_id or None).
    schedule: list[tuple[float, Record, str | None]] = []
    for n in range(int(starts_per_s * seconds)):
        vaccination_id = f"{tag}-{n}"
        schedule.append((n / starts_per_s, workload.start(vaccination_id), vaccination_id))
    for n in range(int(commands_per_s * seconds)):
        schedule.append((n / commands_per_s, command(), None))
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
            # A client that runs all day knows its topics: fetch their metadata before the
            # clock starts, or the first sends of a phase wait for it (refreshes are
            # paced, services.common.kafka_metadata) and count against the service.
            for topic in sorted({item[1].topic(topics) for item in schedule}):
                await producer.partitions_for(topic)
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


# A latency load whose prompts do not all arrive, or whose median exceeds this, saturates
# the service: higher loads would only measure a growing queue, and are skipped.
SATURATED_P50_MS = 1000.0


def saturated(result: LatencyResult) -> bool:
    return result.received < result.starts or result.p50_ms > SATURATED_P50_MS


@dataclass
class LatencySeries:
    results: list[LatencyResult] = field(default_factory=list)
    skipped: dict[int, int] = field(default_factory=dict)  # load -> the load that saturated

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency": [r.as_dict() for r in self.results],
            "latency_skipped": {str(k): v for k, v in self.skipped.items()},
        }


MIN_PROMPTS = 400


async def latency_series(
    stack: ServiceStack,
    workload: Workload,
    loads: Sequence[int],
    *,
    seconds: float,
    say: Callable[[str], None],
    command: Callable[[], Record] | None = None,
) -> LatencySeries:
    """`prompt_latency` at each load in turn (commands at half the start rate), the
    service drained between loads; once a load saturates it, the higher ones are skipped.
    A load runs `seconds`, or longer where that would give fewer than `MIN_PROMPTS`
    prompts (a p99 of 60 prompts is their second-worst)."""
    series = LatencySeries()
    at: int | None = None
    for load in loads:
        if at is not None:
            series.skipped[load] = at
            continue
        length = max(seconds, MIN_PROMPTS / load)
        say(f"  prompt latency at {load} starts/s (+{load // 2} commands/s), {length:.0f} s")
        with client_gc_quiet():
            result = await prompt_latency(
                stack,
                workload,
                starts_per_s=load,
                commands_per_s=load // 2,
                seconds=length,
                drain_s=max(15.0, 2 * length),
                command=command,
            )
        series.results.append(result)
        say(
            f"  p50 {result.p50_ms} ms, p95 {result.p95_ms} ms, "
            f"p99 {result.p99_ms} ms ({result.received}/{result.starts} prompts)"
        )
        if saturated(result):
            at = load
            say("  the service cannot keep up: higher loads are skipped")
        await drain(stack, limit_s=120)
    return series
