"""Fault 4: the export service is killed with SIGKILL at random points and started again.

Compaction equivalence must still hold: the last value per key on the export topic is,
byte for byte, the record the export's own builder makes from the groups database's rows
(the backfill's path). The default export carries no personnummer.
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
from tests.reliability.exportcheck import compare_export
from tests.reliability.harness import (
    Stack,
    StreamProducer,
    caught_up,
    gate,
    read_topic,
    settle,
    topic_size,
    wait_until,
)
from tests.reliability.model import ALLOWED_UNITS, StreamGenerator, StreamSpec, inputs_by_role


async def export_size(stack: Stack) -> int:
    return await topic_size(stack.bootstrap, stack.topics.export)


def spread(count: int, kills: int, rng: random.Random) -> list[int]:
    """Kill positions spread over the stream, each jittered within its own stretch."""
    step = count // (kills + 1)
    return [step * (i + 1) + rng.randrange(-step // 4, step // 4 + 1) for i in range(kills)]


async def test_export_killed_at_random_points(
    stack: Stack, scale: Scale, catalog: Catalog, today: date, check: Check
) -> None:
    seed = 5004
    spec = StreamSpec(
        seed=seed, customers=scale.export_customers, inputs=scale.export_inputs, waves=3
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    total = len(stream.model.inbox)
    rng = random.Random(seed)
    count = len(stream.inputs)
    kill_after = spread(count, scale.export_kills, rng)
    await stack.start_groups({"GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS)})
    export = await stack.start_export()
    started = time.monotonic()

    kills: list[dict[str, Any]] = []
    restarts: list[asyncio.Task[float]] = []
    position = 0
    try:
        async with StreamProducer(stack.bootstrap) as producer:
            for wave, expected in zip(stream.waves, stream.inbox_after_wave, strict=True):
                cuts = [p - position for p in kill_after if position < p < position + len(wave)]
                for begin, end in zip([0, *cuts], [*cuts, len(wave)], strict=True):
                    if restarts:  # up again before the next stretch is sent
                        await restarts[-1]
                    before = await export_size(stack)
                    await producer.send_inputs(stack, wave[begin:end])
                    if end == len(wave):
                        break

                    async def exporting(before: int = before) -> bool:
                        return await export_size(stack) > before

                    try:  # kill while it is writing, if it gets to write anything
                        await wait_until(exporting, timeout=20, interval=0.1, what="export")
                        busy = True
                    except AssertionError:
                        busy = False
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    await export.kill()
                    kills.append({"after_input": position + end, "busy": busy})
                    restarts.append(asyncio.create_task(export.start()))
                position += len(wave)
                await gate(stack, expected)
            restart_seconds = list(await asyncio.gather(*restarts))
    finally:
        for task in restarts:
            task.cancel()

    await settle(stack, total)
    export_lag = await caught_up(stack, stack.export_group, [stack.topics.events])
    elapsed = time.monotonic() - started
    reconciliation = await reconcile(stack, stream.model)
    exported = await compare_export(stack, stream.personnummer)
    dead = [
        r
        for r in await read_topic(stack.bootstrap, stack.topics.dlq)
        if dict(r.headers).get("dlq-service") == b"export-service"
    ]
    zero = zero_problem_figures(reconciliation)
    check.record(
        "export_crash",
        "4. export service SIGKILLed at random points",
        summary=exported.summary(
            inputs=len(stream.inputs), faults=len(kills), zero=zero, lag=export_lag.values()
        ),
        inputs_by_topic=inputs_by_role(stream.inputs),
        kills=[
            f"after input {k['after_input']}" + (" while exporting" if k["busy"] else "")
            for k in kills
        ],
        restart_seconds=[round(s, 1) for s in restart_seconds],
        export_records_on_topic=exported.records_on_topic,
        export_keys_compared=exported.keys_expected,
        keys_whose_last_value_differs_from_the_database=len(exported.different),
        export_dead_letters=len(dead),
        wall_seconds=round(elapsed, 1),
    )

    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    exported.assert_equivalent()
    assert exported.keys_expected > 0
    assert exported.personnummer_found == 0
    assert dead == []
    assert len(kills) == scale.export_kills >= 3
    assert export.running()
