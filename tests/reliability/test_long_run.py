"""A long run in simulated weeks: retention keeps the pruned tables bounded.

The groups service runs as its own process with a short prune interval. Each round is a
week of traffic: a generated stream with bad input among it (so there are dead letters)
and one outbox row the broker refuses for good (a parked row) is fed and applied; then
every row of the pruned tables is dated back a week (the column each is pruned by), as
if the week had passed. The service's own pruner must then delete, within one prune
interval, every row now past its table's retention, and nothing younger. Rows and
`pg_total_relation_size` of each table are measured before and after, every week.

The aging UPDATE leaves a dead copy of every row, which a deployment (rows written once,
deleted once) never has; the test VACUUMs the three tables after each week's pruning,
as the autovacuum of the skipped days would have, so that space is free for the next
week's rows. VACUUM returns (almost) no space to the system: a size is the table's
high-water mark, the room those copies took included.

At the end an inbox row one hour inside the window is still there and its command, sent
again, is recognised as a duplicate; two hours later the row is gone. The PDL audit log,
seeded with rows ten years old, is untouched throughout.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.settings import GroupsSettings
from services.groups.adapters.orm import audit_log, inbox, outbox
from services.groups.adapters.retention import prune_targets
from services.groups.domain.catalog import Catalog
from services.groups.service_layer import messages
from tests.reliability.badinput import BadInputGenerator, mix_into_waves
from tests.reliability.conftest import Check, Scale
from tests.reliability.harness import (
    Stack,
    StreamProducer,
    caught_up,
    gate,
    metric,
    read_topic,
    wait_until,
)
from tests.reliability.model import (
    ALLOWED_UNITS,
    COMMANDS,
    ROLES,
    Input,
    StreamGenerator,
    StreamSpec,
    inputs_by_role,
)

WEEK = timedelta(days=7)
# The retentions are the shipped defaults; the prune interval is shortened.
SETTINGS = GroupsSettings.model_construct(
    prune_interval_seconds=2.0, prune_batch_size=100, prune_pause_seconds=0.01
)
TARGETS = {target.name: target for target in prune_targets(SETTINGS)}
# A pass starts within 1.1 intervals of the previous one's end (jitter); its batches
# and the polling here take a moment more on a busy machine.
PRUNED_WITHIN = SETTINGS.prune_interval_seconds * 1.1 + 1.5
LIMIT = 64 * 1024
REFUSED_BYTES = 1_048_576 + 16 * 1024  # over the topic's max.message.bytes: parked
ANCIENT = timedelta(days=3650)
ANCIENT_AUDIT_ROWS = 3
# Once a table's window is full, its size may not pass this multiple of its size the
# week the window first filled (its rows then stay about constant).
SIZE_GROWTH_LIMIT = 1.5
TIMEOUT = 300.0


@dataclass
class Week:
    waves: list[list[Input]]
    inbox_after: list[int]
    new_rows: dict[str, int]  # per pruned table
    bad_inputs: int
    added: list[Input]  # commands that added a membership: redelivered at the end


def week_of_traffic(number: int, scale: Scale, catalog: Catalog, today: date) -> Week:
    # Seeds ten apart: a bad-input generator takes its odd customers from seed + 1.
    seed = 15_000 + 10 * number
    spec = StreamSpec(
        seed=seed, customers=scale.long_run_customers, inputs=scale.long_run_inputs, waves=2
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    generator = BadInputGenerator(
        stream.model, seed, stream.personnummer, today=today, max_bytes=LIMIT
    )
    bad = generator.generate(scale.long_run_bad_per_topic, ROLES)
    waves, inbox_after = mix_into_waves(stream, bad, random.Random(seed))
    added = [
        item
        for item in stream.inputs
        if item.role == COMMANDS
        and not item.redelivery
        and item.event_id in stream.model.results
        and stream.model.results[item.event_id].type == messages.ADDED
    ]
    return Week(
        waves,
        inbox_after,
        {
            "inbox": inbox_after[-1],
            "dead_letters": sum(1 for b in bad if b.expect == "dlq"),
            "outbox_parked": 1,
        },
        bad_inputs=len(bad) + 1,
        added=added,
    )


@dataclass(frozen=True)
class TableState:
    rows: int
    past_retention: int
    kb: int


async def table_states(stack: Stack) -> dict[str, TableState]:
    states = {}
    async with stack.engine.connect() as connection:
        for name, target in TARGETS.items():
            rows, past = (
                await connection.execute(
                    select(
                        func.count(),
                        func.count().filter(target.dated_by < func.now() - target.retention),
                    ).select_from(target.table)
                )
            ).one()
            size = await connection.scalar(
                text("SELECT pg_total_relation_size(CAST(:name AS regclass))"), {"name": name}
            )
            states[name] = TableState(int(rows), int(past), round(int(size) / 1024))
    return states


async def age(stack: Stack, span: timedelta, *, inbox_canary: str | None = None) -> None:
    """Date every row of the pruned tables `span` back, as if that time had passed; with a
    canary, also an inbox row a minute past its retention, which only a pass that began
    after this commit can delete."""
    async with stack.engine.begin() as connection:
        for target in TARGETS.values():
            await connection.execute(
                update(target.table).values({target.dated_by: target.dated_by - span})
            )
        if inbox_canary is not None:
            await connection.execute(
                insert(inbox).values(
                    topic="long-run-canary",
                    event_id=inbox_canary,
                    processed_at=func.now() - TARGETS["inbox"].retention - timedelta(minutes=1),
                )
            )


async def vacuum(stack: Stack) -> None:
    """What autovacuum does in the days the test skips."""
    async with stack.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text(f"VACUUM {', '.join(TARGETS)}"))


async def pruned(stack: Stack) -> tuple[float, dict[str, TableState]]:
    """Wait until no row is past its table's retention; the seconds it took, and then."""
    started = time.monotonic()
    deadline = started + TIMEOUT
    while True:
        states = await table_states(stack)
        if not any(s.past_retention for s in states.values()):
            return time.monotonic() - started, states
        if time.monotonic() > deadline:
            raise AssertionError(f"rows past their retention not pruned: {states}")
        await asyncio.sleep(0.05)


_AUDIT_DIGEST = text(
    "SELECT count(*), coalesce(md5(string_agg(a::text, ',' ORDER BY a.id)), '')"
    " FROM audit_log a WHERE a.id <= :last"
)


async def audit_digest(connection: AsyncConnection, last: int) -> tuple[int, str]:
    count, digest = (await connection.execute(_AUDIT_DIGEST, {"last": last})).one()
    return int(count), str(digest)


async def audit_snapshot(stack: Stack) -> tuple[int, tuple[int, str]]:
    """The newest audit row's id, and the count and digest of the rows up to it."""
    async with stack.engine.connect() as connection:
        last = int(await connection.scalar(select(func.coalesce(func.max(audit_log.c.id), 0))) or 0)
        return last, await audit_digest(connection, last)


async def audit_unchanged(stack: Stack, snapshot: tuple[int, tuple[int, str]]) -> bool:
    last, before = snapshot
    async with stack.engine.connect() as connection:
        return await audit_digest(connection, last) == before


def kept(week_rows: Sequence[int], ages: Sequence[timedelta], retention: timedelta) -> int:
    """The rows a table must hold: those of the weeks still inside its retention."""
    return sum(rows for rows, age in zip(week_rows, ages, strict=True) if age < retention)


@dataclass
class Ledger:
    """What each week wrote per table, how old it is now, and what went wrong."""

    written: dict[str, list[int]] = field(default_factory=lambda: {n: [] for n in TARGETS})
    ages: list[timedelta] = field(default_factory=list)
    lost: int = 0
    problems: list[str] = field(default_factory=list)

    def add_week(self, rows: dict[str, int]) -> None:
        for name in TARGETS:
            self.written[name].append(rows[name])
        self.ages.append(timedelta(0))

    def shift(self, span: timedelta) -> bool:
        """Every week `span` older; whether one crossed a table's retention."""
        self.ages = [a + span for a in self.ages]
        return any(
            a - span < target.retention <= a for target in TARGETS.values() for a in self.ages
        )

    def expected(self) -> dict[str, int]:
        return {n: kept(self.written[n], self.ages, t.retention) for n, t in TARGETS.items()}

    def compare(self, when: str, states: dict[str, TableState]) -> None:
        """Rows inside their retention missing count as lost; any difference is a problem."""
        expected = self.expected()
        found = {name: state.rows for name, state in states.items()}
        self.lost += sum(max(0, expected[n] - found[n]) for n in TARGETS)
        if found != expected:
            self.problems.append(f"{when}: rows {found}, expected {expected}")


async def test_a_long_run_keeps_the_pruned_tables_bounded(
    stack: Stack, scale: Scale, catalog: Catalog, today: date, check: Check
) -> None:
    groups = await stack.start_groups(
        {
            "GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS),
            "KAFKA_MAX_MESSAGE_BYTES": str(LIMIT),
            "GROUPS_INBOX_RETENTION_DAYS": str(SETTINGS.inbox_retention_days),
            "GROUPS_DEAD_LETTER_RETENTION_DAYS": str(SETTINGS.dead_letter_retention_days),
            "GROUPS_PARKED_RETENTION_DAYS": str(SETTINGS.parked_retention_days),
            "GROUPS_PRUNE_INTERVAL_SECONDS": str(SETTINGS.prune_interval_seconds),
            "GROUPS_PRUNE_BATCH_SIZE": str(SETTINGS.prune_batch_size),
            "GROUPS_PRUNE_PAUSE_SECONDS": str(SETTINGS.prune_pause_seconds),
        }
    )
    pid = groups.pid
    started = time.monotonic()
    async with stack.engine.begin() as connection:
        await connection.execute(
            insert(audit_log),
            [
                {
                    "at": datetime.now(UTC) - ANCIENT,
                    "action": "read",
                    "user_id": "auditor",
                    "unit_id": ALLOWED_UNITS[0],
                }
                for _ in range(ANCIENT_AUDIT_ROWS)
            ],
        )

    weeks: list[Week] = []
    ledger = Ledger()
    per_week: dict[str, list[tuple[TableState, TableState]]] = {n: [] for n in TARGETS}
    prune_seconds: list[float] = []
    audit_changed = 0
    states = await table_states(stack)
    async with StreamProducer(stack.bootstrap) as producer:
        for number in range(scale.long_run_weeks):
            week = week_of_traffic(number, scale, catalog, today)
            weeks.append(week)
            await feed(stack, producer, week, states, number)
            before = await table_states(stack)
            ledger.add_week(week.new_rows)
            ledger.compare(f"week {number + 1} applied", before)
            snapshot = await audit_snapshot(stack)

            due = ledger.shift(WEEK)
            await age(stack, WEEK)
            seconds, after = await pruned(stack)
            if due:
                prune_seconds.append(seconds)
            ledger.compare(f"week {number + 1} pruned", after)
            audit_changed += 0 if await audit_unchanged(stack, snapshot) else 1
            await vacuum(stack)
            states = await table_states(stack)
            for name in TARGETS:
                per_week[name].append((before[name], states[name]))

        # The edge of the idempotency window: the oldest week still in the inbox is moved
        # to one hour inside it, and a pass (seen by its canary's going) must keep it.
        window = TARGETS["inbox"].retention
        oldest = max(a for a in ledger.ages if a < window)
        edge_week = weeks[ledger.ages.index(oldest)]
        edge_shift = window - timedelta(hours=1) - oldest
        canary = f"canary-{uuid.uuid4().hex}"
        ledger.shift(edge_shift)
        await age(stack, edge_shift, inbox_canary=canary)

        async def canary_pruned() -> bool:
            found = await stack.scalar(select(func.count()).where(inbox.c.event_id == canary))
            return int(found) == 0

        await wait_until(canary_pruned, timeout=TIMEOUT, what="a pass after the edge shift")
        edge = await table_states(stack)
        edge_inbox = ledger.expected()["inbox"]
        ledger.compare("one hour inside the inbox window", edge)

        # A command of that week, sent again: still a duplicate.
        command = edge_week.added[0]
        duplicates = await metric(groups, "groups_records_total", outcome="duplicate")
        processed = await metric(groups, "groups_records_total", outcome="processed")
        await producer.send_inputs(stack, [command])

        async def recognised() -> bool:
            found = await metric(groups, "groups_records_total", outcome="duplicate")
            return found > duplicates

        await wait_until(recognised, timeout=TIMEOUT, what="the redelivery seen as a duplicate")
        await asyncio.sleep(1.0)  # time for an answer, had it been applied again
        redelivery: dict[str, float] = {
            "duplicate": await metric(groups, "groups_records_total", outcome="duplicate")
            - duplicates,
            "processed": await metric(groups, "groups_records_total", outcome="processed")
            - processed,
            "answers": await answers_to(stack, command),
        }
        ledger.compare("after the redelivery", await table_states(stack))

        # Two hours later that week is past the window: pruned within one interval.
        ledger.shift(timedelta(hours=2))
        await age(stack, timedelta(hours=2))
        seconds, final = await pruned(stack)
        prune_seconds.append(seconds)
        ledger.compare("one hour past the inbox window", final)

    lag = await caught_up(stack, stack.groups_group, stack.topics.inbound)
    elapsed = time.monotonic() - started
    by_metric = {
        name: round(await metric(groups, "groups_retention_pruned_rows_total", table=name))
        for name in TARGETS
    }
    by_count = {  # the canary is the inbox's one extra
        name: sum(ledger.written[name]) - final[name].rows + (name == "inbox") for name in TARGETS
    }
    ancient_left = int(
        await stack.scalar(select(func.count()).where(audit_log.c.at < func.now() - ANCIENT + WEEK))
    )
    audit_rows = int(await stack.scalar(select(func.count()).select_from(audit_log)))
    await vacuum(stack)
    final = await table_states(stack)

    growth = size_growth(per_week)
    inputs = [item for week in weeks for wave in week.waves for item in wave]
    simulated = WEEK * len(weeks) + edge_shift + timedelta(hours=2)
    weekly: dict[str, Any] = {}
    for name in TARGETS:
        weekly[f"{name} rows per week before→after pruning"] = [
            f"{before.rows}→{after.rows}" for before, after in per_week[name]
        ]
    for name in TARGETS:
        weekly[f"{name} kB per week before→after pruning and VACUUM"] = [
            f"{before.kb}→{after.kb}" for before, after in per_week[name]
        ]
    check.record(
        "long_run",
        f"Long run: {simulated.days} days of traffic in {len(weeks)} weekly steps, pruned",
        summary={
            "inputs": len(inputs) + 1,
            "faults": 0,
            "bad_inputs": sum(week.bad_inputs for week in weeks),
            "lost": ledger.lost,
            "duplicated_effects": max(0, round(redelivery["answers"]) - 1),
            "stuck_partitions": sum(1 for v in lag.values() if v),
        },
        pruned=[
            (
                name,
                f"{target.retention.days} days",
                sum(ledger.written[name]),
                max(before.rows for before, _ in per_week[name]),
                final[name].rows,
                max(max(before.kb, after.kb) for before, after in per_week[name]),
                final[name].kb,
            )
            for name, target in TARGETS.items()
        ],
        inputs_by_topic=inputs_by_role(inputs),
        prune_interval_s=SETTINGS.prune_interval_seconds,
        prune_batch_rows=SETTINGS.prune_batch_size,
        **weekly,
        size_growth_once_the_window_was_full=growth,
        seconds_from_aging_to_pruned_max=round(max(prune_seconds), 2),
        seconds_allowed=round(PRUNED_WITHIN, 2),
        rows_inside_their_retention_lost=ledger.lost,
        inbox_rows_one_hour_inside_the_window_kept=f"{edge['inbox'].rows} of {edge_inbox}",
        redelivered_command_one_hour_inside_the_window={k: round(v) for k, v in redelivery.items()},
        rows_pruned_by_the_metric=by_metric,
        audit_log_rows=audit_rows,
        audit_log_rows_ten_years_old_left=f"{ancient_left} of {ANCIENT_AUDIT_ROWS}",
        audit_log_weeks_with_a_row_changed_or_removed=audit_changed,
        service_restarts=groups.starts - 1,
        wall_seconds=round(elapsed, 1),
    )

    assert ledger.problems == [], "\n".join(ledger.problems)
    assert ledger.lost == 0
    assert max(prune_seconds) <= PRUNED_WITHIN, prune_seconds
    assert redelivery == {"duplicate": 1, "processed": 0, "answers": 1}, redelivery
    assert all(g <= SIZE_GROWTH_LIMIT for g in growth.values()), growth
    assert by_metric == by_count, (by_metric, by_count)
    assert audit_changed == 0
    assert ancient_left == ANCIENT_AUDIT_ROWS
    assert not any(lag.values()), lag
    assert groups.running() and groups.pid == pid and groups.starts == 1


async def feed(
    stack: Stack,
    producer: StreamProducer,
    week: Week,
    states: dict[str, TableState],
    number: int,
) -> None:
    """A week's outbox row the broker refuses, and its stream, applied."""
    async with stack.engine.begin() as connection:
        await connection.execute(
            insert(outbox).values(
                topic=stack.topics.prompts,
                key=b"long-run",
                # Random, so it takes its full size in the table (TOAST compresses).
                value=random.Random(number).randbytes(REFUSED_BYTES),
                headers=[],
            )
        )
    base = {name: state.rows for name, state in states.items()}
    for wave, expected in zip(week.waves, week.inbox_after, strict=True):
        await producer.send_inputs(stack, wave)
        await gate(stack, base["inbox"] + expected, timeout=TIMEOUT)
    want = {name: base[name] + week.new_rows[name] for name in TARGETS}

    async def applied() -> bool:
        now = await table_states(stack)
        return await stack.outbox_count() == 0 and all(
            now[name].rows >= rows for name, rows in want.items()
        )

    await wait_until(applied, timeout=TIMEOUT, what=f"week {number + 1} applied")


async def answers_to(stack: Stack, command: Input) -> int:
    """Result events on the events topic for `command`."""
    found = 0
    for record in await read_topic(stack.bootstrap, stack.topics.events):
        assert record.value is not None
        if json.loads(record.value)["data"].get("command_id") == command.event_id:
            found += 1
    return found


def size_growth(per_week: dict[str, list[tuple[TableState, TableState]]]) -> dict[str, float]:
    """Per table: its largest size after pruning, from the week its window first filled
    (pruning began) on, over its size that week."""
    growth = {}
    for name, target in TARGETS.items():
        weeks = len(per_week[name])
        full = sum(1 for week in range(1, weeks + 1) if WEEK * week < target.retention)
        sizes = [after.kb for _, after in per_week[name]][full:]
        if sizes:
            growth[name] = round(max(sizes) / sizes[0], 2)
    return growth
