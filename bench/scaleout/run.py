"""The scale-out run: part 1 (the service flat out), part 2 (the relay alone, per round
size), then the derived costs, the partitions and the projection; one table, one JSON."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.infra import Databases, local_infrastructure
from bench.machine import load_average, machine_facts
from bench.report import Row, rate, render, render_facts, write_json
from bench.runner import Errors, _terminate
from bench.scaleout import model
from bench.scaleout.relay import RelayCost, relay_alone
from bench.scaleout.service import ServiceCost, measure_service
from bench.workload import Workload
from devinfra.provider import Infrastructure
from services.common.kafka import topic_specs
from services.common.settings import KafkaSettings, TopicSettings

WARM_RECORDS = 500
GROUPS = ("groups service", "postgresql", "kafka", "bench client", "whole machine")


def say(message: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_partitions() -> dict[str, int]:
    """Partitions of each topic the service creates, with the default settings."""
    specs = topic_specs(TopicSettings.model_construct(), KafkaSettings.model_construct())
    return {spec.name: spec.partitions for spec in specs}


def batch_sizes(text: str) -> list[int | None]:
    return [None if part == "wired" else int(part) for part in text.split(",") if part]


async def run(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    logdir = args.out.parent / "logs" / "scaleout"
    databases = Databases(infra)
    errors = Errors()
    partitions = KafkaSettings.model_construct().inbound_partitions
    service: ServiceCost | None = None
    relays: list[RelayCost] = []
    created: dict[str, int] = {}
    try:
        workload = Workload(max(10_000, args.records))
        warm, mix = workload.mix(WARM_RECORDS), workload.mix(args.records)
        outputs: list[Any] = []
        async with errors.guard("part 1: service"):
            say(f"part 1: one groups process, {len(mix.records):,} records flat out")
            service, outputs, created = await measure_service(
                infra, databases, workload, warm, mix,
                processes=1, partitions=partitions, logdir=logdir,
            )  # fmt: skip
            say(f"  {service.rate:,.0f} rec/s; {len(outputs):,} outputs read back")
        for size in batch_sizes(args.batch_sizes):
            async with errors.guard(f"part 2: relay, batch {size or 'wired'}"):
                say(f"part 2: the relay alone, {args.relay_rows:,} rows, batch {size or 'wired'}")
                relayed = await relay_alone(
                    infra, databases, outputs,
                    rows=args.relay_rows, batch_size=size, partitions=partitions, logdir=logdir,
                )  # fmt: skip
                relays.append(relayed)
                say(f"  {relayed.rate:,.0f} rows/s, relay at {relayed.relay_cores} cores")
    finally:
        await databases.drop_all()
    costs = None if service is None or not relays else costs_of(service, relays[0])
    fit = round_fit(relays)
    in_service = None if service is None else relay_in_service(service, fit)
    projected = [] if costs is None else model.projections(costs, partitions)
    return {
        "config": {
            "records": args.records,
            "relay_rows": args.relay_rows,
            "batch_sizes": args.batch_sizes,
            "partitions": partitions,
        },
        "service": None if service is None else service.as_dict(),
        "relay": [r.as_dict() for r in relays],
        "costs_us_per_record": None if costs is None else costs.as_dict(),
        "relay_round_fit": fit,
        "relay_in_service_us_per_record": None if in_service is None else round(in_service, 1),
        "partitions": {"default": default_partitions(), "this run": created},
        "projections": [p.as_dict() for p in projected],
        "errors": dict(errors),
        "rows": table(service, relays, costs, in_service, projected, partitions, errors),
    }


def costs_of(service: ServiceCost, relay: RelayCost) -> model.Costs:
    part1, part2 = service.cpu_ms_per_1000, relay.cpu_ms_per_1000
    return model.Costs(
        service=part1["groups service"],
        postgresql=part1["postgresql"],
        kafka=part1["kafka"],
        outputs_per_record=round(service.outputs / service.records, 3),
        relay_per_row=part2["outbox relay"],
        relay_rows_per_s=relay_ceiling(relay),
    )


def relay_ceiling(relay: RelayCost) -> float:
    """One leader's rows/s with cores to spare: the measured rate, or the serial estimate
    from its CPU when a busy machine held the measured rate below it (both are lower
    bounds of what the leader does on free cores)."""
    return max(relay.steady_rate or relay.rate, relay.serial_rows_per_s)


def round_fit(relays: list[RelayCost]) -> dict[str, float] | None:
    """The relay's CPU per row as a fixed cost per read plus a cost per row, from the two
    round sizes measured: cpu_per_row = per_read_us / rows_per_read + per_row_us."""
    points = [
        (r.relay_reads["rows"] / r.relay_reads["calls"], r.cpu_ms_per_1000["outbox relay"])
        for r in relays
        if r.relay_reads and r.relay_reads["calls"]
    ]
    if len(points) < 2 or points[0][0] == points[1][0]:
        return None
    (b1, c1), (b2, c2) = points[:2]
    per_read = (c1 - c2) / (1 / b1 - 1 / b2)
    return {"per_read_us": round(per_read, 1), "per_row_us": round(c1 - per_read / b1, 2)}


def relay_in_service(service: ServiceCost, fit: dict[str, float] | None) -> float | None:
    """The fit at part 1's rows per read, per inbound record (CPU-us): the relay's share
    of the service as it ran (a read that found nothing counts as a round, so high)."""
    reads = service.relay_reads
    if fit is None or not reads or not reads["rows"]:
        return None
    per_row = fit["per_read_us"] * reads["calls"] / reads["rows"] + fit["per_row_us"]
    return per_row * service.outputs / service.records


def _per_read(reads: dict[str, int] | None) -> str:
    if not reads or not reads["calls"]:
        return "-"
    return f"{reads['rows'] / reads['calls']:,.0f} ({reads['calls']:,} reads)"


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def table(
    service: ServiceCost | None,
    relays: list[RelayCost],
    costs: model.Costs | None,
    in_service: float | None,
    projected: list[model.Projection],
    partitions: int,
    errors: Errors,
) -> list[Row]:
    rows = [Row(f"{section} (failed)", error, verdict="ERROR") for section, error in errors.items()]
    if service is not None:
        done = "" if service.complete else " (incomplete)"
        rows.append(
            Row(
                "1. groups end to end, 1 process, mix flat out",
                f"{rate(service.rate)} (steady {rate(service.steady_rate)}){done}",
            )
        )
        for group in GROUPS:
            if group in service.cpu_ms_per_1000:
                rows.append(
                    Row(f"   CPU per 1,000 inbound: {group}", _ms(service.cpu_ms_per_1000[group]))
                )
        rows.append(
            Row("   outputs per inbound record", f"{service.outputs / service.records:.2f}")
        )
        rows.append(Row("   relay: rows per read of the outbox", _per_read(service.relay_reads)))
        rows.append(
            Row("   PostgreSQL WAL per inbound record", f"{service.wal_bytes_per_record:,.0f} B")
        )
    for relayed in relays:
        done = "" if relayed.complete else f" (incomplete: {relayed.read_back:,} read back)"
        rows.append(
            Row(
                f"2. relay alone, {relayed.label}",
                f"{rate(relayed.rate, 'rows/s')} (steady {rate(relayed.steady_rate, 'rows/s')}), "
                f"relay at {relayed.relay_cores:.2f} cores{done}",
            )
        )
        rows.append(
            Row(
                "   rows per read; WAL per row; machine busy",
                f"{_per_read(relayed.relay_reads)}; {relayed.wal_bytes_per_row:,.0f} B; "
                f"{relayed.machine_cores:.2f} of {os.cpu_count()} cores",
            )
        )
        per = relayed.cpu_ms_per_1000
        rows.append(
            Row(
                "   CPU per 1,000 rows: relay / postgresql / kafka",
                " / ".join(_ms(per.get(g, 0.0)) for g in ("outbox relay", "postgresql", "kafka")),
            )
        )
    if costs is not None:
        rows.append(Row("3. relay CPU per 1,000 inbound (the leader)", _ms(costs.relay)))
        if in_service is not None:
            rows.append(Row("   (at part 1's rows per read, fitted)", _ms(in_service)))
        rows.append(Row("   apply CPU per 1,000 inbound (service - relay)", _ms(costs.apply)))
        leader, ceiling = relays[0], costs.relay_rows_per_s
        rows.append(
            Row(
                "   relay leader ceiling: rows/s; inbound rec/s",
                f"{ceiling:,.0f}; {ceiling / costs.outputs_per_record:,.0f}"
                f" (measured {leader.steady_rate:,.0f}, serial CPU "
                f"{leader.serial_rows_per_s:,.0f} rows/s)",
            )
        )
    rows.append(
        Row(
            "4. partitions per inbound topic (default)",
            f"{partitions}: at most {partitions} consuming processes",
        )
    )
    for p in projected:
        design = f"{p.partitions} partitions" + (
            f", {p.shards} relay shards" if p.shards > 1 else ""
        )
        rows.append(
            Row(
                f"projected, {p.cores} cores, {design}",
                f"{rate(p.rate)} with {p.processes} processes (limit: {p.limit})",
            )
        )
    return rows


def main(args: argparse.Namespace, source: str) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    say(f"scale-out run of {source}; starting Apache Kafka and PostgreSQL")
    with local_infrastructure() as infra:
        facts = machine_facts(infra.kafka_version, infra.postgres_version)
        facts["services"] = source
        results = asyncio.run(run(infra, args))
    facts["load_average_at_end"] = load_average()
    facts["run_seconds"] = round(time.monotonic() - began, 1)
    rows: list[Row] = results.pop("rows")
    print(f"\nMachine and software (scale-out run)\n{render_facts(facts)}\n")
    print(render(rows))
    out: Path = args.out
    write_json(out, {"machine": facts, **results}, rows)
    print(f"\nresults: {out}")
    return 0
