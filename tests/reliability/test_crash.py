"""Fault 1: the groups service is killed with SIGKILL mid-stream, again and again.

A seeded stream of bookings, starts and commands (with duplicates, redeliveries and
commands that break each rule) is produced while the service is killed at spread-out
points and started again. Afterwards the database must equal the model, every command
must have exactly one result, every expected event must be on the topic (distinct by id
exactly the expected set) and every vaccination exactly one prompt id.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import date
from typing import Any

from services.groups.domain.catalog import Catalog
from tests.reliability.checks import reconcile, zero_problem_figures
from tests.reliability.conftest import Check, Scale
from tests.reliability.harness import (
    Stack,
    StreamProducer,
    caught_up,
    failed_batches,
    gate,
    settle,
    wait_until,
)
from tests.reliability.model import (
    ALLOWED_UNITS,
    Stream,
    StreamGenerator,
    StreamSpec,
    inputs_by_role,
    reason_counts,
)

GATE_TIMEOUT = 300.0


async def restart(stack: Stack, applied: int, killed: float) -> dict[str, Any]:
    groups = stack.groups
    assert groups is not None
    restart_seconds = await groups.start()

    async def progressed() -> bool:
        return await stack.inbox_count() > applied

    await wait_until(progressed, timeout=GATE_TIMEOUT, interval=0.05, what="progress")
    return {
        "applied_at_kill": applied,
        "restart_s": round(restart_seconds, 1),
        "recovered_s": round(time.monotonic() - killed, 1),
    }


async def produce_with_kills(
    stack: Stack, stream: Stream, kill_after: list[int], seed: int
) -> list[dict[str, Any]]:
    """Produce the stream wave by wave (each wave is applied before the next is sent, as
    a nurse waits for the popup). After the inputs at each `kill_after` position are
    sent and the service is busy with them, SIGKILL it; it is started again while the
    producer goes on, so the kill always lands mid-stream."""
    groups = stack.groups
    assert groups is not None
    rng = random.Random(seed)
    restarts: list[asyncio.Task[dict[str, Any]]] = []
    position = 0
    try:
        async with StreamProducer(stack.bootstrap) as producer:
            for wave, expected in zip(stream.waves, stream.inbox_after_wave, strict=True):
                cuts = [p - position for p in kill_after if position < p < position + len(wave)]
                for begin, end in zip([0, *cuts], [*cuts, len(wave)], strict=True):
                    await producer.send_inputs(stack, wave[begin:end])
                    if end == len(wave):
                        break
                    if restarts:  # the previous restart is done before the next kill
                        await restarts[-1]
                    before = await stack.inbox_count()

                    async def busy(before: int = before) -> bool:
                        return await stack.inbox_count() > before

                    await wait_until(busy, timeout=GATE_TIMEOUT, interval=0.02, what="busy")
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    applied = await stack.inbox_count()
                    await groups.kill()
                    killed = time.monotonic()
                    restarts.append(asyncio.create_task(restart(stack, applied, killed)))
                position += len(wave)
                await gate(stack, expected)
        return list(await asyncio.gather(*restarts))
    finally:
        for task in restarts:
            task.cancel()


async def test_groups_service_killed_mid_stream(
    stack: Stack, scale: Scale, catalog: Catalog, today: date, check: Check
) -> None:
    spec = StreamSpec(
        seed=5001,
        customers=scale.crash_customers,
        inputs=scale.crash_inputs,
        waves=scale.crash_waves,
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    total = len(stream.model.inbox)
    count = len(stream.inputs)
    kill_after = [count * (i + 1) // (scale.crash_kills + 1) for i in range(scale.crash_kills)]
    groups = await stack.start_groups({"GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS)})
    started = time.monotonic()
    kills = await produce_with_kills(stack, stream, kill_after, spec.seed)

    await settle(stack, total)
    lag = await caught_up(stack, stack.groups_group, stack.topics.inbound)
    elapsed = time.monotonic() - started
    reconciliation = await reconcile(stack, stream.model)
    failed = failed_batches(groups.log_path)

    inputs = stream.inputs
    reasons = reason_counts(stream.model)
    figures = reconciliation.figures
    zero = zero_problem_figures(reconciliation)
    check.record(
        "crash",
        "1. groups service SIGKILLed mid-stream",
        summary={
            "inputs": len(inputs),
            "faults": len(kills),
            "bad_inputs": 0,
            "lost": zero["lost"],
            "duplicated_effects": zero["duplicated_effects"],
            "stuck_partitions": sum(1 for v in lag.values() if v),
        },
        customers=spec.customers,
        inputs_by_topic=inputs_by_role(inputs),
        redeliveries=stream.counts["redeliveries"],
        repeated_starts=stream.counts.get("repeated_start", 0),
        stale_booking_updates=stream.counts.get("stale_booking_update", 0),
        kills=[
            f"after input {p} sent, {k['applied_at_kill']}/{total} applied"
            for p, k in zip(kill_after, kills, strict=True)
        ],
        restart_seconds=[k["restart_s"] for k in kills],
        seconds_from_kill_to_progress=[k["recovered_s"] for k in kills],
        command_results=reasons,
        unauthorized_commands_rejected=f"{reasons.get('UNAUTHORIZED', 0)} of "
        f"{stream.counts.get('unauthorized', 0)}",
        events_published=figures["events_published"],
        events_distinct=figures["events_distinct"],
        events_resent_copies=figures["events_resent_copies"],
        prompts_published=figures["prompts_published"],
        prompts_distinct=figures["prompts_distinct"],
        db_rows_compared=figures["db_rows_compared"],
        batches_replayed_after_an_error=failed,
        wall_seconds=round(elapsed, 1),
    )

    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    assert failed == 0, f"{failed} batches failed and were replayed record by record"
    assert len(kills) == scale.crash_kills >= 3
    assert all(k["applied_at_kill"] < total for k in kills), "every kill was mid-stream"
    assert all(p < count for p in kill_after), "inputs were still to be sent at every kill"
    assert reasons.get("UNAUTHORIZED", 0) == stream.counts.get("unauthorized", 0) > 0
    assert groups.running() and groups.starts == scale.crash_kills + 1
