"""Fault 3: PostgreSQL is down for a while mid-stream.

The groups service must wait with backoff (not crash-loop: same process throughout; not
spin: its CPU time during the outage is measured), commit no offset past a record it has
not applied, and resume on its own when the database is back; nothing is lost.

"No offset past an unapplied record" is checked exactly: the offsets the consumer group
has committed while the database is down are read from the broker, and every record
below them must have been applied (its event id in the inbox) *before* the outage began,
by the inbox rows' `processed_at` (the database's clock, the transaction's start).
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from typing import Any

from aiokafka.structs import RecordMetadata
from sqlalchemy import text

from devinfra.provider import Infrastructure
from devinfra.services import http_json
from services.groups.domain.catalog import Catalog
from tests.reliability.checks import reconcile, zero_problem_figures
from tests.reliability.conftest import Check, Scale, require_local
from tests.reliability.harness import (
    Stack,
    busy,
    caught_up,
    committed_offsets,
    gate,
    send_inputs,
    settle,
)
from tests.reliability.model import (
    ALLOWED_UNITS,
    Input,
    StreamGenerator,
    StreamSpec,
    inputs_by_role,
)

CPU_LIMIT = 0.20  # share of one core


async def test_database_outage_mid_stream(
    stack: Stack,
    infra: Infrastructure,
    scale: Scale,
    catalog: Catalog,
    today: date,
    check: Check,
) -> None:
    require_local(infra.postgres, "PostgreSQL")
    postgres = infra.postgres
    assert postgres is not None
    spec = StreamSpec(
        seed=5003, customers=scale.outage_customers, inputs=scale.outage_inputs, waves=3
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    total = len(stream.model.inbox)
    groups = await stack.start_groups({"GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS)})
    pid = groups.pid
    started = time.monotonic()

    sent: list[tuple[Input, RecordMetadata]] = []
    outage: dict[str, float] = {}
    committed_early: dict[str, int] = {}
    committed_late: dict[str, int] = {}
    health_during: tuple[int, Any] = (0, {})
    for number, (wave, expected) in enumerate(
        zip(stream.waves, stream.inbox_after_wave, strict=True)
    ):
        sent += zip(wave, await send_inputs(stack, wave), strict=True)
        if number != 1:
            await gate(stack, expected)
            continue
        await busy(stack)
        applied_before = await stack.inbox_count()
        await postgres.astop()
        down = time.monotonic()
        cpu_before = groups.cpu_seconds()
        await asyncio.sleep(2.0)  # a batch that committed just before the stop may ack now
        committed_early = {
            f"{tp.topic}[{tp.partition}]": o
            for tp, o in (await committed_offsets(stack.bootstrap, stack.groups_group)).items()
        }
        health_during = await asyncio.to_thread(http_json, f"{groups.process.url}/healthz")
        await asyncio.sleep(max(0.0, scale.outage_seconds - (time.monotonic() - down)))
        committed_late = {
            f"{tp.topic}[{tp.partition}]": o
            for tp, o in (await committed_offsets(stack.bootstrap, stack.groups_group)).items()
        }
        cpu = groups.cpu_seconds() - cpu_before
        outage_seconds = time.monotonic() - down
        await postgres.astart()
        back = time.monotonic()
        # The restarted server's start: every transaction applied before the outage began
        # before it (a batch may still commit between the stop's request and the stop).
        db_restart_time: datetime = await stack.scalar(text("SELECT pg_postmaster_start_time()"))
        await gate(stack, expected)
        resumed = time.monotonic() - back
        outage = {
            "applied_before": applied_before,
            "seconds": outage_seconds,
            "cpu_seconds": cpu,
            "resumed_s": resumed,
            "db_restart_time": db_restart_time.timestamp(),
        }

    await settle(stack, total)
    lag = await caught_up(stack, stack.groups_group, stack.topics.inbound)
    elapsed = time.monotonic() - started

    # Every record below an offset committed during the outage was applied before it.
    processed_at = {
        (topic, event_id): at
        for topic, event_id, at in await stack.rows(
            "SELECT topic, event_id, processed_at FROM inbox"
        )
    }
    restart_at = outage["db_restart_time"]
    past_unapplied = []
    checked = 0
    for item, meta in sent:
        committed = committed_late.get(f"{meta.topic}[{meta.partition}]", 0)
        if meta.offset >= committed:
            continue
        checked += 1
        at = processed_at.get((meta.topic, item.event_id))
        if at is None or at.timestamp() >= restart_at:
            past_unapplied.append((meta.topic, meta.partition, meta.offset))

    reconciliation = await reconcile(stack, stream.model)
    zero = zero_problem_figures(reconciliation)
    cpu_share = outage["cpu_seconds"] / outage["seconds"]
    status, health = health_during
    checks = health.get("checks") if isinstance(health, dict) else health
    check.record(
        "database_outage",
        f"3. PostgreSQL down {outage['seconds']:.0f} s mid-stream",
        summary={
            "inputs": len(stream.inputs),
            "faults": 1,
            "bad_inputs": 0,
            "lost": zero["lost"],
            "duplicated_effects": zero["duplicated_effects"],
            "stuck_partitions": sum(1 for v in lag.values() if v),
        },
        inputs_by_topic=inputs_by_role(stream.inputs),
        outage_seconds=round(outage["seconds"], 1),
        applied_when_stopped=f"{outage['applied_before']}/{total}",
        service_cpu_seconds_during_outage=round(outage["cpu_seconds"], 2),
        service_cpu_share_of_one_core=round(cpu_share, 3),
        healthz_during_outage=f"{status} {checks}",
        offsets_committed_during_outage_advanced=committed_early != committed_late,
        records_below_committed_offsets_checked=checked,
        records_committed_past_unapplied=len(past_unapplied),
        seconds_from_database_back_to_wave_applied=round(outage["resumed_s"], 1),
        service_restarts=groups.starts - 1,
        wall_seconds=round(elapsed, 1),
    )

    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    assert outage["seconds"] >= 10.0
    assert cpu_share < CPU_LIMIT, f"{cpu_share:.0%} of a core while the database was down"
    assert past_unapplied == [], past_unapplied[:10]
    assert checked > 0
    assert committed_early == committed_late, "offsets moved while nothing could be applied"
    assert status == 503
    assert groups.running() and groups.pid == pid and groups.starts == 1
