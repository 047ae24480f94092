"""Two export processes through a rebalance, the first slowed (issue 15).

The first export process (`tests.reliability.slow_export`: the service with a producer
that holds its sends for a while once told to) exports the stream alone; as the last
wave goes in, it is told to hold, and while it holds a batch a second export process
joins its consumer group, so partitions move to the second (A -> B); once all is
exported the second stops and they move back (B -> A). Then: the last record per key on
the export topic is the record built from the database's row (stale values: 0) and the
key's highest version, and the group's committed offsets never went back (stale
commits: 0).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import date

from services.groups.domain.catalog import Catalog
from tests.kafka_tools import CommittedOffsets, keys_behind_newest
from tests.reliability.checks import reconcile, zero_problem_figures
from tests.reliability.conftest import Check, Scale
from tests.reliability.exportcheck import compare_export
from tests.reliability.harness import (
    ServiceHandle,
    Stack,
    StreamProducer,
    caught_up,
    gate,
    read_topic,
    settle,
    wait_until,
)
from tests.reliability.model import ALLOWED_UNITS, StreamGenerator, StreamSpec, inputs_by_role
from tests.reliability.slow_export import HOLDING

HOLD_SECONDS = 8.0  # the first's sends, once told: under the export's 30 s settle limit


def hold_next_sends(handle: ServiceHandle) -> Callable[[], Awaitable[bool]]:
    """Tell the slowed process to hold its next sends; returns "it holds some"."""
    assert handle.pid is not None
    since = handle.log_path.stat().st_size

    async def holding() -> bool:
        return HOLDING.encode() in handle.log_path.read_bytes()[since:]

    os.kill(handle.pid, signal.SIGUSR1)
    return holding


async def test_two_export_processes_through_a_rebalance(
    stack: Stack, scale: Scale, catalog: Catalog, today: date, check: Check
) -> None:
    spec = StreamSpec(
        seed=5005, customers=scale.export_customers, inputs=scale.export_inputs, waves=3
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    total = len(stream.model.inbox)
    await stack.start_groups({"GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS)})
    first = stack.service(
        "tests.reliability.slow_export", {"SLOW_EXPORT_HOLD_SECONDS": str(HOLD_SECONDS)}
    )
    await first.start()
    second = stack.service("services.export")
    watch = CommittedOffsets(stack.bootstrap, stack.export_group)
    started = time.monotonic()
    moves: list[str] = []
    held_until = 0.0
    async with watch.watching():
        async with StreamProducer(stack.bootstrap) as producer:
            for number, (wave, expected) in enumerate(
                zip(stream.waves, stream.inbox_after_wave, strict=True)
            ):
                if number == len(stream.waves) - 1:  # A -> B while A holds a batch of it
                    holds = hold_next_sends(first)
                    await producer.send_inputs(stack, wave)
                    await wait_until(holds, timeout=60, what="the first holding a batch")
                    held_until = time.monotonic() + HOLD_SECONDS
                    await second.start()
                    moves.append("A -> B while A held a batch")
                else:
                    await producer.send_inputs(stack, wave)
                await gate(stack, expected)
        await settle(stack, total)
        await caught_up(stack, stack.export_group, [stack.topics.events])
        await second.stop()  # B -> A
        moves.append("B -> A")
        export_lag = await caught_up(stack, stack.export_group, [stack.topics.events])
        # A batch the first held ended by now, and a stale commit of it would show.
        await asyncio.sleep(max(0.0, held_until - time.monotonic()) + 1.0)
    elapsed = time.monotonic() - started

    reconciliation = await reconcile(stack, stream.model)
    exported = await compare_export(stack, stream.personnummer)
    older_last = sorted(keys_behind_newest(await read_topic(stack.bootstrap, stack.topics.export)))
    zero = zero_problem_figures(reconciliation)
    check.record(
        "export_rebalance",
        "Two export processes through a rebalance, the first slowed (A -> B -> A)",
        summary=exported.summary(
            inputs=len(stream.inputs), faults=len(moves), zero=zero, lag=export_lag.values()
        ),
        inputs_by_topic=inputs_by_role(stream.inputs),
        partition_moves=moves,
        sends_held_seconds=HOLD_SECONDS,
        export_records_on_topic=exported.records_on_topic,
        export_keys_compared=exported.keys_expected,
        stale_values=len(exported.different),
        keys_whose_last_record_is_older_than_their_newest=len(older_last),
        committed_offsets_moved_back=len(watch.backwards),
        wall_seconds=round(elapsed, 1),
    )

    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    exported.assert_equivalent()
    assert older_last == [], older_last[:5]
    assert watch.backwards == [], watch.backwards
    assert exported.keys_expected > 0 and exported.personnummer_found == 0
    assert first.running() and first.starts == 1
