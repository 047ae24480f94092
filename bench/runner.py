"""The benchmark run: every measurement in order, then one table and the JSON file.

Starts its own Apache Kafka broker and embedded PostgreSQL (temporary directories),
measures the limits and the services in the same run, prints the machine facts and the
table, writes `.run/bench/results.json`, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import limits, versus
from bench.export import ExportResult, export_backfill
from bench.groups import (
    LatencySeries,
    ServiceStack,
    ThroughputResult,
    client_gc_quiet,
    groups_stack,
    latency_series,
    throughput,
    warm_up,
)
from bench.infra import Databases, asyncpg_dsn, local_infrastructure
from bench.machine import load_average, machine_facts
from bench.report import Row, check, millis, rate, render, render_facts, write_json
from bench.workload import VERSUS_MIX, Workload
from devinfra.provider import Infrastructure

log = logging.getLogger("bench")

E2E_SHARE = 0.5
# Prompt latency targets by offered load (starts/s): p50 and p99 at most, in ms (issue
# 17); a load not listed has none. At 1,000 starts/s every prompt must arrive.
P50_TARGETS_MS = {20: 5.0, 200: 5.0}
P99_TARGETS_MS = {20: 15.0, 200: 15.0, 500: 40.0}
EXPORT_RATE = 20_000
EXPORT_RSS_MIB = 300.0
RSS_GROWTH = 1.15  # peak RSS at the largest size / at the smallest
SCALING = 1.6
LOADS = (20, 200, 500, 1000)  # starts/s of the latency phases (issue 17's loads)


@dataclass(frozen=True)
class Config:
    mode: str
    customers: int
    limit_records: int
    throughput_records: int
    warm_records: int
    latency_seconds: float
    loads: tuple[int, ...]
    export_rows: tuple[int, ...]
    # The comparison: the groups service's record count, then the plain service's (the
    # first records of the same mix): each window lasts several seconds at its rate.
    versus_records: int
    versus_plain_records: int
    partitions: int = 6

    @staticmethod
    def of(mode: str, loads: tuple[int, ...] | None = None) -> Config:
        if mode == "full":
            return Config(
                mode="full",
                customers=100_000,
                limit_records=100_000,
                throughput_records=100_000,
                warm_records=1_000,
                latency_seconds=20.0,
                loads=loads or LOADS,
                export_rows=(100_000, 1_000_000),
                versus_records=100_000,
                versus_plain_records=10_000,
            )
        return Config(
            mode="quick",
            customers=10_000,
            limit_records=20_000,
            throughput_records=10_000,
            warm_records=200,
            latency_seconds=3.0,
            loads=loads or LOADS,
            export_rows=(50_000,),
            versus_records=20_000,
            versus_plain_records=3_000,
        )


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Errors(dict[str, str]):
    """What failed, by section; a failed section leaves the others running."""

    @contextlib.asynccontextmanager
    async def guard(self, section: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as error:
            self[section] = f"{type(error).__name__}: {error}"[:300]
            _say(f"  {section} FAILED: {self[section]}")
            log.debug("section %s failed", section, exc_info=True)


async def run(infra: Infrastructure, config: Config, args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    logdir = out.parent / "logs"
    phases: tuple[str, ...] = args.phases
    results: dict[str, Any] = {"mode": config.mode, "config": config.__dict__, "phases": phases}
    databases = Databases(infra)
    errors = Errors()
    figures = Figures()
    try:
        _say(f"generating the mix over {config.customers:,} customers")
        workload = Workload(config.customers)
        warm = workload.mix(config.warm_records)
        mix = workload.mix(config.throughput_records)
        results["mix"] = {
            "records": len(mix.records),
            "by_type": mix.by_type,
            "mean_value_bytes": round(mix.mean_bytes, 1),
            "expected_prompts": mix.prompts,
            "expected_events": mix.events,
        }
        repeat = config.limit_records // len(mix.records) + 1
        limit_records = (mix.records * repeat)[: config.limit_records]

        if "limits" in phases:
            async with errors.guard("limit 1"):
                _say(f"limit 1: raw aiokafka consume->produce pipe, {len(limit_records):,} records")
                with client_gc_quiet():
                    figures.pipe = await limits.kafka_pipe(
                        infra.kafka_bootstrap,
                        limit_records,
                        suffix=uuid.uuid4().hex[:8],
                        partitions=config.partitions,
                        limit_s=300,
                    )
                _say(f"  {figures.pipe.rate:,.0f} records/s")
            async with errors.guard("limit 2"):
                _say(
                    f"limit 2: raw asyncpg inserts, {len(limit_records):,} rows, "
                    "500 per transaction"
                )
                pg_url = await databases.create("bench_limit")
                with client_gc_quiet():
                    figures.inserts = await limits.postgres_inserts(
                        asyncpg_dsn(pg_url), limit_records
                    )
                _say(
                    f"  executemany {figures.inserts.executemany_rate:,.0f} rows/s, "
                    f"COPY {figures.inserts.copy_rate:,.0f}"
                )

            async with errors.guard("limit 3"):
                _say("limit 3: latency floors, one record at a time")
                floors_url = await databases.create("bench_floor")
                with client_gc_quiet():
                    figures.floors = await limits.latency_floors(
                        infra.kafka_bootstrap, asyncpg_dsn(floors_url)
                    )
                _say(f"  {figures.floors.as_dict()}")

        limit_s = max(120.0, len(mix.records) / 50)

        @contextlib.asynccontextmanager
        async def measured(
            processes: int, profile_to: Path | None = None
        ) -> AsyncIterator[tuple[ServiceStack, ThroughputResult]]:
            """Fresh groups processes, warmed up, after the mix's throughput run."""
            async with groups_stack(
                infra, databases, workload, processes=processes, partitions=config.partitions,
                logdir=logdir,
            ) as stack:  # fmt: skip
                await warm_up(stack, warm)
                _say(f"  throughput: {len(mix.records):,} records produced as fast as possible")
                with client_gc_quiet():
                    result = await throughput(stack, mix, limit_s=limit_s, profile_to=profile_to)
                _say(f"  {result.rate:,.0f} records/s end to end")
                yield stack, result

        if "groups" in phases:
            async with errors.guard("groups, 1 process"):
                _say("groups service, 1 process: seeding, starting, warming up")
                async with measured(1) as (stack, one):
                    figures.throughputs[1] = one
                    figures.latency = await latency_series(
                        stack, workload, config.loads, seconds=config.latency_seconds, say=_say
                    )

        if "scaling" in phases:
            async with errors.guard("groups, 2 processes"):
                _say("groups service, 2 processes in one consumer group")
                async with measured(2) as (_, two):
                    figures.throughputs[2] = two

        if "versus" in phases:
            versus_warm = workload.mix(config.warm_records, VERSUS_MIX)
            versus_mix = workload.mix(config.versus_records, VERSUS_MIX)
            figures.versus = await versus.compare(
                infra,
                databases,
                workload,
                warm=versus_warm,
                mix=versus_mix,
                plain_records=config.versus_plain_records,
                loads=config.loads,
                seconds=config.latency_seconds,
                partitions=config.partitions,
                logdir=logdir,
                say=_say,
                guard=errors.guard,
            )

        if args.profile:
            async with errors.guard("profile"):
                _say("profile: 1 process under py-spy, SQL counted (not used for the figures)")
                async with measured(1, out.parent / "profile-groups.txt") as (_, profiled):
                    results["profile"] = profiled.as_dict()

        for rows in config.export_rows if "export" in phases else ():
            async with errors.guard(f"export {rows:,}"):
                _say(f"export backfill of {rows:,} memberships")
                exported = await export_backfill(
                    infra, databases, rows, limit_seconds=max(120.0, rows / 2000)
                )
                figures.exports.append(exported)
                _say(
                    f"  {exported.rows_per_second:,.0f} rows/s, "
                    f"peak RSS {exported.peak_rss_mib} MiB"
                )

        results["limits"] = {
            "kafka_pipe": None
            if figures.pipe is None
            else {**figures.pipe.__dict__, "rate": round(figures.pipe.rate, 1)},
            "postgres_insert": None if figures.inserts is None else figures.inserts.__dict__,
            "latency_floors": None if figures.floors is None else figures.floors.as_dict(),
        }
        results["throughput"] = {str(k): v.as_dict() for k, v in figures.throughputs.items()}
        results.update(figures.latency.as_dict())
        results["versus"] = {name: f.as_dict() for name, f in figures.versus.items()}
        results["export"] = [e.as_dict() for e in figures.exports]
        results["errors"] = dict(errors)
        results["rows"] = table(figures, errors)
        return results
    finally:
        await databases.drop_all()


@dataclass
class Figures:
    pipe: limits.KafkaPipeResult | None = None
    inserts: limits.PostgresInsertResult | None = None
    floors: limits.LatencyFloors | None = None
    throughputs: dict[int, ThroughputResult] = field(default_factory=dict)
    latency: LatencySeries = field(default_factory=LatencySeries)
    exports: list[ExportResult] = field(default_factory=list)
    versus: dict[str, versus.ServiceFigures] = field(default_factory=dict)


def table(figures: Figures, errors: Errors) -> list[Row]:
    rows = [Row(f"{section} (failed)", error, verdict="ERROR") for section, error in errors.items()]
    pipe, inserts = figures.pipe, figures.inserts
    if pipe is not None:
        rows.append(Row("limit 1: aiokafka consume->produce pipe", rate(pipe.rate)))
    if inserts is not None:
        rows.append(
            Row("limit 2: asyncpg executemany, 500/tx", rate(inserts.executemany_rate, "rows/s"))
        )
        rows.append(Row("(asyncpg COPY, 500/tx)", rate(inserts.copy_rate, "rows/s")))
    if figures.floors is not None:
        for name, floor in (
            ("Kafka hop", figures.floors.kafka_hop),
            ("transactional Kafka hop", figures.floors.transactional_hop),
            ("PostgreSQL transaction", figures.floors.postgres_transaction),
        ):
            rows.append(
                Row(
                    f"limit 3: {name} p50 / p99",
                    f"{millis(floor.p50_ms)} / {millis(floor.p99_ms)}",
                )
            )
    limit = min(pipe.rate, inserts.executemany_rate) if pipe and inserts else None
    one = figures.throughputs.get(1)
    if one is not None:
        value = rate(one.rate) + ("" if one.complete else " (incomplete)")
        if limit is not None:
            rows.append(
                check(
                    "groups end to end, 1 process",
                    value,
                    f">= {E2E_SHARE:.0%} of {rate(limit)}",
                    one.rate / limit,
                    one.complete and one.rate >= E2E_SHARE * limit,
                )
            )
        else:
            rows.append(Row("groups end to end, 1 process", value))
        rows.append(Row("(steady state, middle 80 % committed)", rate(one.steady_rate)))
    for result in figures.latency.results:
        load = result.offered_starts_per_s
        label = f"prompt latency @{load} starts/s"
        if result.received < result.starts:
            label += f" ({result.received}/{result.starts} received)"
        p50_target = P50_TARGETS_MS.get(load)
        rows.append(
            check(
                f"{label} p50 / p95",
                f"{millis(result.p50_ms)} / {millis(result.p95_ms)}",
                f"p50 <= {p50_target:.0f} ms" if p50_target else "",
                result.p50_ms / p50_target if p50_target else None,
                result.p50_ms <= p50_target if p50_target else None,
            )
        )
        p99_target = P99_TARGETS_MS.get(load)
        finite = math.isfinite(result.p99_ms)
        rows.append(
            check(
                f"prompt latency @{load} starts/s p99",
                millis(result.p99_ms),
                f"<= {p99_target:.0f} ms" if p99_target else "every prompt",
                result.p99_ms / p99_target if p99_target and finite else None,
                result.p99_ms <= p99_target if p99_target else finite,
            )
        )
    for load, at in figures.latency.skipped.items():
        rows.append(
            check(
                f"prompt latency @{load} starts/s p99",
                f"skipped: saturated at {at} starts/s",
                f"<= {P99_TARGETS_MS[load]:.0f} ms" if load in P99_TARGETS_MS else "every prompt",
                None,
                False,
            )
        )
    two = figures.throughputs.get(2)
    if two is not None:
        ratio = two.rate / one.rate if one is not None and one.rate else None
        rows.append(
            check(
                "groups end to end, 2 processes",
                rate(two.rate) + ("" if two.complete else " (incomplete)"),
                f">= {SCALING} x 1 process",
                ratio,
                two.complete and ratio is not None and ratio >= SCALING,
            )
        )
    rows.extend(versus.rows(figures.versus))
    for exported in figures.exports:
        size = f"{exported.rows:,}"
        rows.append(
            check(
                f"export backfill {size} rows",
                rate(exported.rows_per_second, "rows/s"),
                f">= {EXPORT_RATE:,} rows/s",
                exported.rows_per_second / EXPORT_RATE,
                exported.complete and exported.rows_per_second >= EXPORT_RATE,
            )
        )
        rows.append(
            check(
                f"export backfill {size} rows peak RSS",
                f"{exported.peak_rss_mib:,.0f} MiB",
                f"< {EXPORT_RSS_MIB:.0f} MiB",
                exported.peak_rss_mib / EXPORT_RSS_MIB,
                exported.peak_rss_mib < EXPORT_RSS_MIB,
            )
        )
    if len(figures.exports) > 1:
        first, last = figures.exports[0], figures.exports[-1]
        growth = last.peak_rss_mib / first.peak_rss_mib
        rows.append(
            check(
                f"export peak RSS {last.rows:,} / {first.rows:,} rows",
                f"x {growth:.2f}",
                f"<= x {RSS_GROWTH}",
                growth / RSS_GROWTH,
                growth <= RSS_GROWTH,
            )
        )
    return rows


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every context manager: nothing is left running


def main(args: argparse.Namespace, source: str) -> int:
    config = Config.of("full" if args.full else "quick", args.loads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    _say(f"{config.mode} run of {source}; starting Apache Kafka and PostgreSQL")
    with local_infrastructure() as infra:
        facts = machine_facts(infra.kafka_version, infra.postgres_version)
        facts["services"] = source
        results = asyncio.run(run(infra, config, args))
    facts["load_average_at_end"] = load_average()
    facts["run_seconds"] = round(time.monotonic() - began, 1)
    rows: list[Row] = results.pop("rows")
    print(f"\nMachine and software ({config.mode} run)\n{render_facts(facts)}\n")
    print(render(rows))
    write_json(args.out, {"machine": facts, **results}, rows)
    print(f"\nresults: {args.out}")
    return 0
