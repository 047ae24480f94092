"""The comparison: the groups service against a plain FastStream service in one run.

Both get the same work, starts and adds only (`VERSUS_MIX`, two starts per add), on the
same broker and PostgreSQL, each with fresh topics and a fresh database seeded with the
same customers and memberships, one process each, measured by the same client
(`bench.groups`): throughput, produced as fast as possible, until the last output is
read (both services' windows end the same way), then prompt latency at each load with
adds at half the start rate. The groups service runs first, then the plain one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import services.groups.catalog
from bench.groups import (
    LatencyResult,
    LatencySeries,
    ServiceStack,
    ThroughputResult,
    client_gc_quiet,
    groups_stack,
    latency_series,
    throughput,
    warm_up,
)
from bench.infra import (
    Databases,
    asyncpg_dsn,
    create_topics,
    service_processes,
    topic_names,
    wait_group_stable,
)
from bench.plain_service.tables import Base
from bench.report import Row, check, millis, rate
from bench.workload import Mix, Workload
from devinfra.provider import Infrastructure
from services.common.db import create_engine
from services.common.settings import DatabaseSettings

THROUGHPUT_RATIO = 10.0  # issue 17: the groups service >= 10 x the plain one
GROUPS, PLAIN = "groups", "plain"
SERVICE_NAMES = {GROUPS: "groups service", PLAIN: "plain service"}
# The plain service's tables: no bookings nor prompts (it reads neither).
PLAIN_SEED_TABLES = ("customers", "memberships")
# FastStream gives each subscriber its own consumer: two members in the plain group.
PLAIN_SUBSCRIBERS = 2


@contextlib.asynccontextmanager
async def plain_stack(
    infra: Infrastructure,
    databases: Databases,
    workload: Workload,
    *,
    partitions: int,
    logdir: Path,
) -> AsyncIterator[ServiceStack]:
    """A fresh database (the plain service's tables, seeded as the groups service's is)
    and topics, and one plain service process."""
    topics = topic_names(uuid.uuid4().hex[:8])
    url = await databases.create("bench_plain")
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()
    await workload.seed(asyncpg_dsn(url), PLAIN_SEED_TABLES)
    inbound = (topics.started, topics.commands)
    # Provisioned as a deployment would: the plain service creates no topics.
    await create_topics(
        infra.kafka_bootstrap, [*inbound, topics.prompts, topics.events], partitions
    )
    group = f"bench-plain-{topics.started.rsplit('.', 1)[-1]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "DATABASE_URL": url,
        "TOPIC_STARTED": topics.started,
        "TOPIC_COMMANDS": topics.commands,
        "TOPIC_PROMPTS": topics.prompts,
        "TOPIC_EVENTS": topics.events,
        "PLAIN_CONSUMER_GROUP": group,
        # The catalog of the services/ copy being measured, as the groups service loads.
        "PLAIN_CATALOG_FILE": str(Path(services.groups.catalog.__file__).with_name("catalog.json")),
        "LOG_LEVEL": "WARNING",
    }
    with contextlib.ExitStack() as stack:
        started = await asyncio.to_thread(
            stack.enter_context,
            service_processes("bench.plain_service", env, 1, logdir, port_env="PLAIN_HTTP_PORT"),
        )
        await wait_group_stable(infra.kafka_bootstrap, group, PLAIN_SUBSCRIBERS, limit_s=60)
        yield ServiceStack(
            SERVICE_NAMES[PLAIN], infra, topics, url, group, started,
            has_outbox=False, inbound_topics=inbound,
        )  # fmt: skip


@dataclass
class ServiceFigures:
    records: int  # of the throughput mix
    throughput: ThroughputResult | None = None
    latency: LatencySeries = field(default_factory=LatencySeries)

    def as_dict(self) -> dict[str, Any]:
        return {
            "throughput": None if self.throughput is None else self.throughput.as_dict(),
            **self.latency.as_dict(),
        }


async def measure(
    name: str,
    stack: ServiceStack,
    workload: Workload,
    warm: Mix,
    mix: Mix,
    *,
    loads: Sequence[int],
    seconds: float,
    say: Callable[[str], None],
    into: dict[str, ServiceFigures],
) -> None:
    """Throughput of `mix`, then the latency series, into `into[name]` as they come (a
    failure later in the phase keeps what was measured)."""
    figures = into[name] = ServiceFigures(len(mix.records))
    await warm_up(stack, warm)
    say(f"  throughput: {len(mix.records):,} starts and adds produced as fast as possible")
    with client_gc_quiet():
        figures.throughput = await throughput(
            stack, mix, limit_s=max(120.0, len(mix.records) / 50), until="outputs"
        )
    say(f"  {figures.throughput.rate:,.0f} records/s end to end")
    figures.latency = await latency_series(
        stack, workload, loads, seconds=seconds, say=say, command=workload.add
    )


async def compare(
    infra: Infrastructure,
    databases: Databases,
    workload: Workload,
    *,
    warm: Mix,
    mix: Mix,
    plain_records: int,
    loads: Sequence[int],
    seconds: float,
    partitions: int,
    logdir: Path,
    say: Callable[[str], None],
    guard: Callable[[str], contextlib.AbstractAsyncContextManager[None]],
) -> dict[str, ServiceFigures]:
    """The groups service on `mix`, then the plain service on its first `plain_records`
    (it is an order of magnitude slower: the same count would take minutes), each in its
    own `guard` section; the figures of each as far as it got."""
    figures: dict[str, ServiceFigures] = {}
    async with guard("versus, groups"):
        say("versus: groups service, 1 process, starts and adds only")
        async with groups_stack(
            infra, databases, workload, processes=1, partitions=partitions, logdir=logdir
        ) as stack:
            await measure(
                GROUPS, stack, workload, warm, mix,
                loads=loads, seconds=seconds, say=say, into=figures,
            )  # fmt: skip
    async with guard("versus, plain"):
        say("versus: plain FastStream service, 1 process, starts and adds only")
        async with plain_stack(
            infra, databases, workload, partitions=partitions, logdir=logdir
        ) as stack:
            await measure(
                PLAIN, stack, workload, warm, mix.head(plain_records),
                loads=loads, seconds=seconds, say=say, into=figures,
            )  # fmt: skip
    return figures


# -- the table -----------------------------------------------------------------------


def _latency_value(result: LatencyResult) -> str:
    value = f"{millis(result.p50_ms)} / {millis(result.p95_ms)} / {millis(result.p99_ms)}"
    if result.received < result.starts:
        value += f" ({result.received}/{result.starts} received)"
    return value


def _by_load(figures: ServiceFigures | None) -> dict[int, LatencyResult | int]:
    """Each load's result, or the load that saturated the service before it."""
    if figures is None:
        return {}
    found: dict[int, LatencyResult | int] = {
        r.offered_starts_per_s: r for r in figures.latency.results
    }
    found.update(figures.latency.skipped)
    return found


def rows(figures: dict[str, ServiceFigures]) -> list[Row]:
    """Side by side: throughput of each and their ratio, then per load each one's
    p50 / p95 / p99 (the groups service's row checks its p99 against the plain one's)."""
    table: list[Row] = []
    ours, plain = figures.get(GROUPS), figures.get(PLAIN)
    for name, found in ((GROUPS, ours), (PLAIN, plain)):
        if found is not None and found.throughput is not None:
            result = found.throughput
            cores = result.cpu_cores.get(SERVICE_NAMES[name], math.nan)
            value = f"{rate(result.rate)}, {cores:.2f} cores"
            if not result.complete:
                value += " (incomplete)"
            table.append(Row(f"versus: {name}, {result.records:,} starts + adds, 1 process", value))
    if ours and plain and ours.throughput and plain.throughput and plain.throughput.rate:
        ratio = ours.throughput.rate / plain.throughput.rate
        table.append(
            check(
                "versus: throughput groups / plain",
                f"x {ratio:,.1f}",
                f">= x {THROUGHPUT_RATIO:.0f}",
                ratio / THROUGHPUT_RATIO,
                ours.throughput.complete and ratio >= THROUGHPUT_RATIO,
            )
        )
    ours_loads, plain_loads = _by_load(ours), _by_load(plain)
    for load in sorted(set(ours_loads) | set(plain_loads)):
        theirs = plain_loads.get(load)
        for name, measured in ((GROUPS, ours_loads.get(load)), (PLAIN, theirs)):
            label = f"versus @{load} starts/s p50 / p95 / p99, {name}"
            if measured is None:
                continue
            if isinstance(measured, int):
                table.append(Row(label, f"skipped: saturated at {measured} starts/s"))
            elif name == PLAIN:
                table.append(Row(label, _latency_value(measured)))
            else:
                table.append(_against_plain(label, measured, theirs))
    return table


def _against_plain(label: str, ours: LatencyResult, theirs: LatencyResult | int | None) -> Row:
    """Ours, checked against the plain service's p99 at the same load (a plain service
    saturated there is beaten by any complete answer of ours)."""
    value = _latency_value(ours)
    complete = ours.received == ours.starts
    if isinstance(theirs, LatencyResult):
        finite = math.isfinite(theirs.p99_ms) and theirs.p99_ms > 0
        return check(
            label,
            value,
            f"p99 < plain's {millis(theirs.p99_ms)}",
            ours.p99_ms / theirs.p99_ms if finite and math.isfinite(ours.p99_ms) else None,
            complete and ours.p99_ms < theirs.p99_ms,
        )
    if isinstance(theirs, int):
        return check(label, value, "all received (plain saturated)", None, complete)
    return Row(label, value)
