"""Scale-out: groups service processes (`python -m services.groups`) in one consumer
group over the real broker and database, partitions moving between them while a stream
of bookings, starts and group commands flows.

Process A starts alone; while the stream is produced, B and C join (each a rebalance),
B is stopped cleanly (SIGTERM), and of A and C the one not publishing the outbox is
killed (SIGKILL) at a moment it holds applied records whose offsets it has not
committed, so the next owner of its partitions gets them again, and started again once
the other owns every partition. The stream is the reliability suite's seeded one
(tests/reliability/model.py: re-deliveries, repeated starts, commands that break rules,
updates and removals), so its model knows every command's one result and every row the
database must hold.

Afterwards: the database equals the model; each command has exactly one result event
(by CloudEvent id and command_id, read `read_committed`), published once; each start
exactly one prompt record; per customer the results are on the events topic in the
order the commands were sent, and each membership's and dose's versions there run 1, 2,
3, ...; A, B and C owned partitions side by side (the group coordinator's assignment)
and applied records (their metrics); the group's lag is 0 and the outbox empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from aiokafka import ConsumerRecord
from aiokafka.structs import TopicPartition
from sqlalchemy import select, tuple_

from devinfra.provider import Infrastructure
from services.groups.adapters.orm import inbox
from services.groups.bootstrap import read_catalog_file
from services.groups.catalog import default_catalog_path
from services.groups.service_layer import messages
from services.groups.service_layer.context import Clock
from tests.kafka_tools import GroupAssignments, GroupSnapshot
from tests.reliability.checks import reconcile, zero_problem_figures
from tests.reliability.harness import (
    ServiceHandle,
    Stack,
    StreamProducer,
    busy,
    caught_up,
    failed_batches,
    gate,
    group_records,
    metric,
    open_stack,
    read_topic,
    settle,
    wait_until,
)
from tests.reliability.model import (
    ALLOWED_UNITS,
    COMMANDS,
    STARTED,
    Stream,
    StreamGenerator,
    StreamSpec,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6  # per inbound topic: two for each of three processes
SPEC = StreamSpec(seed=1717, customers=150, inputs=6000, waves=3)
# Paced while partitions move, so records are in flight at every move; the rest of the
# stream goes at once after the last move.
CHUNK = 20
PACE_SECONDS = 0.25
# Faster while the process to kill is watched for records it applied but has not
# committed: its batches then follow each other, each commit up to 0.1 s after.
FAST_PACE_SECONDS = 0.05
MIN_FREEZES = 3  # each looks for committed offsets past records not applied
MAX_FREEZES = 40
TIMEOUT = 120.0  # any one wait; generous for a slow shared machine
MEMBERSHIP_EVENTS = (messages.ADDED, messages.UPDATED, messages.REMOVED)


@dataclass
class Progress:
    """How far the producer got, and what happened meanwhile."""

    sent: int = 0
    moves: list[tuple[str, int]] = field(default_factory=list)  # (move, inputs sent by then)
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    pace: float = PACE_SECONDS


async def produce(stack: Stack, stream: Stream, progress: Progress) -> None:
    """The stream wave by wave, each applied before the next is sent (its commands may
    name the prompts of the previous one), paced until the partitions stop moving."""
    async with StreamProducer(stack.bootstrap) as producer:
        for wave, expected in zip(stream.waves, stream.inbox_after_wave, strict=True):
            for begin in range(0, len(wave), CHUNK):
                chunk = wave[begin : begin + CHUNK]
                await producer.send_inputs(stack, chunk)
                progress.sent += len(chunk)
                if not progress.moved.is_set():
                    await asyncio.sleep(progress.pace)
            await gate(stack, expected, timeout=TIMEOUT)


@dataclass
class Processes:
    """The three processes, the group member each was (twice for the one killed and
    started again), and the records each applied (read before it stopped)."""

    handles: dict[str, ServiceHandle]
    members: dict[str, list[str]] = field(default_factory=dict)  # process -> member ids
    processed: dict[str, float] = field(default_factory=dict)
    killed: str = ""
    redelivered: int = 0  # applied by the one killed, not committed: delivered again
    freezes: int = 0  # how often it was frozen, the last time killed

    async def note_processed(self, name: str, label: str | None = None) -> None:
        self.processed[label or name] = await metric(
            self.handles[name], "groups_records_total", outcome="processed"
        )

    def member(self, name: str, run: int = 0) -> str:
        return self.members[name][run]


async def relay_leader(processes: Processes, names: Sequence[str]) -> str:
    """Which of `names` publishes the outbox (once exactly one of them says so)."""
    leading: list[str] = []

    async def one() -> bool:
        nonlocal leading
        leading = [
            n
            for n in names
            if await metric(processes.handles[n], "groups_outbox_relay_leader") == 1
        ]
        return len(leading) == 1

    await wait_until(one, timeout=TIMEOUT, what="one relay leader", describe=lambda: leading)
    return leading[0]


async def around_commit(
    stack: Stack, partitions: Iterable[TopicPartition], resent: set[str]
) -> tuple[int, int]:
    """Of the records of `partitions`: the starts and commands after the group's
    committed offset that the service applied already (their ids are in the inbox; the
    stream's own re-deliveries, `resent`, left out), which their next owner gets again;
    and the records before it that it has not applied, which nobody would apply (must
    be none)."""
    found = await group_records(
        stack.bootstrap, stack.groups_group, list(partitions), before_commit=True
    )
    # ((topic, event id), after the committed offset), in offset order per partition
    records = [
        ((tp.topic, json.loads(record.value)["id"]), record.offset >= committed)
        for tp, (committed, items) in found.items()
        for record in items
    ]
    if not records:
        return 0, 0
    statement = select(inbox.c.topic, inbox.c.event_id).where(
        tuple_(inbox.c.topic, inbox.c.event_id).in_({pair for pair, _ in records})
    )
    async with stack.engine.connect() as connection:
        applied = {(topic, event_id) for topic, event_id in await connection.execute(statement)}
    # A start or a command applied twice would show (a prompt, a result), a booking not.
    shown = {stack.topics.started, stack.topics.commands}
    behind = sum(
        1 for p, after in records if after and p[0] in shown and p in applied and p[1] not in resent
    )
    lost = sum(1 for p, after in records if not after and p not in applied)
    return behind, lost


async def kill_behind(
    stack: Stack,
    processes: Processes,
    name: str,
    partitions: set[TopicPartition],
    stream: Stream,
    progress: Progress,
) -> None:
    """SIGKILL `name` at a moment it has applied starts or commands whose offsets it has
    not committed, so the partitions' next owner gets them again and only the inbox keeps
    them from being applied twice. The moment is short (a commit follows each applied
    batch within 0.1 s): the process is frozen (SIGSTOP) as records are applied, and
    let go on (SIGCONT) if it has none such (or it was frozen fewer than `MIN_FREEZES`
    times). Each time, no offset it committed may pass a record it has not applied."""
    handle = processes.handles[name]
    assert handle.pid is not None
    resent = {str(item.event_id) for item in stream.inputs if item.redelivery}
    progress.pace = FAST_PACE_SECONDS
    try:
        for freeze in range(1, MAX_FREEZES + 1):
            await busy(stack, timeout=TIMEOUT)
            os.kill(handle.pid, signal.SIGSTOP)
            behind = lost = 0
            try:
                behind, lost = await around_commit(stack, partitions, resent)
            finally:
                kill = behind > 0 and lost == 0 and freeze >= MIN_FREEZES
                if not kill:
                    os.kill(handle.pid, signal.SIGCONT)
            assert lost == 0, f"{name} committed offsets past {lost} records it had not applied"
            if kill:
                await handle.kill()
                processes.redelivered, processes.freezes = behind, freeze
                return
    finally:
        progress.pace = PACE_SECONDS
    raise AssertionError(f"{name} never had applied records uncommitted when frozen")


async def move_partitions(
    stack: Stack, stream: Stream, assignments: GroupAssignments, progress: Progress
) -> tuple[Processes, dict[str, GroupSnapshot]]:
    """A alone; B joins; C joins; B stops (SIGTERM); of A and C the one that does not
    publish the outbox is killed (SIGKILL) and, once the other owns every partition,
    started again. Each move begins while the service applies records and ends once
    the group settled. Returns the processes and the group after each move."""
    extra = {
        "GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS),
        "KAFKA_INBOUND_PARTITIONS": str(PARTITIONS),
    }
    handles = {n: stack.service("services.groups", extra, name=f"groups-{n}") for n in "ABC"}
    processes = Processes(handles)
    after: dict[str, GroupSnapshot] = {}

    async def joined(name: str, members: int) -> GroupSnapshot:
        before = {m for ids in processes.members.values() for m in ids}
        await handles[name].start(wait=TIMEOUT)
        snapshot = await assignments.wait_settled(members, timeout=TIMEOUT)
        [new] = snapshot.members.keys() - before
        processes.members.setdefault(name, []).append(new)
        return snapshot

    async def stopped(
        name: str, members: int, stop: Callable[[], Awaitable[None]]
    ) -> GroupSnapshot:
        await processes.note_processed(name)
        await stop()
        gone = [processes.member(name)]
        return await assignments.wait_settled(members, without=gone, timeout=TIMEOUT)

    async def move(name: str, action: Awaitable[GroupSnapshot]) -> None:
        await busy(stack, timeout=TIMEOUT)  # records in flight as the partitions move
        progress.moves.append((name, progress.sent))
        after[name] = await action

    after["A starts"] = await joined("A", 1)
    await move("B joins", joined("B", 2))
    await move("C joins", joined("C", 3))
    await move("B stops", stopped("B", 2, handles["B"].stop))
    # Killing the relay's leader would let it publish some rows twice (at least once,
    # same bytes), which a start answered twice would look like: the leader stays.
    leader = await relay_leader(processes, ["A", "C"])
    processes.killed = victim = "C" if leader == "A" else "A"
    owned = after["B stops"].members[processes.member(victim)]

    async def kill() -> None:
        await kill_behind(stack, processes, victim, set(owned), stream, progress)

    await move("killed", stopped(victim, 1, kill))
    await move("started again", joined(victim, 2))  # as a new member
    progress.moved.set()
    return processes, after


def order_problems(
    stream: Stream, records: Sequence[ConsumerRecord[bytes, bytes]]
) -> tuple[list[str], dict[str, int]]:
    """Per customer (the events' key), the commands' results must be on the events topic
    in the order the commands were sent; each membership's versions and each dose's
    confirmation versions must run 1, 2, 3, ... First copies count (the relay may send
    a record again after a crash, with the same id)."""
    sent: dict[bytes | None, list[str]] = {}
    for item in stream.inputs:
        if item.role == COMMANDS and not item.redelivery:
            sent.setdefault(item.key, []).append(str(item.event_id))
    seen: set[str] = set()
    answered: dict[bytes | None, list[str]] = {}
    versions: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = json.loads(record.value)
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        data = event["data"]
        if data.get("command_id") in stream.model.results:
            answered.setdefault(record.key, []).append(data["command_id"])
        if event["type"] in MEMBERSHIP_EVENTS:
            membership = data["membership"]
            versions.setdefault(membership["membership_id"], []).append(membership["version"])
        elif event["type"] == messages.CONFIRMED:
            versions.setdefault(data["vaccination_id"], []).append(data["version"])
    problems: list[str] = []
    compared = 0
    for key, commands in sent.items():
        got = answered.get(key, [])
        # A command with an invalid personnummer is answered under no key: not compared.
        wanted = [c for c in commands if c in set(got)]
        compared += len(got)
        if got != wanted:
            at = next(i for i, (g, w) in enumerate(zip(got, wanted, strict=True)) if g != w)
            problems.append(
                f"customer {key!r}: result {at + 1} of {len(got)} answers {got[at]}, "
                f"the command sent then was {wanted[at]}"
            )
    for name, found in versions.items():
        if found != list(range(1, len(found) + 1)):
            problems.append(f"{name}: versions {found} on the events topic")
    figures = {
        "results_in_order": compared,
        "customers": len(sent),
        "versioned": len(versions),
        "versions_above_1": sum(1 for found in versions.values() if len(found) > 1),
    }
    if compared < 0.9 * len(stream.model.results):
        problems.append(f"only {compared} of {len(stream.model.results)} results compared")
    return problems, figures


def prompt_problems(
    stream: Stream, records: Sequence[ConsumerRecord[bytes, bytes]]
) -> tuple[list[str], dict[str, int]]:
    """Every start answered by exactly one prompt record: as many per vaccination as
    distinct starts of it were sent (a start sent again under a new id gets the same
    prompt again; a re-delivered one, the same id, none)."""
    starts = Counter(
        json.loads(item.value or b"")["data"]["vaccination_id"]
        for item in stream.inputs
        if item.role == STARTED and not item.redelivery
    )
    prompts = Counter(json.loads(record.value)["data"]["vaccination_id"] for record in records)
    problems = [
        f"vaccination {v}: {prompts[v]} prompt records for {starts[v]} starts"
        for v in starts.keys() | prompts.keys()
        if prompts[v] != starts[v]
    ]
    return problems, {"starts": starts.total(), "prompt_records": prompts.total()}


async def test_three_processes_apply_every_record_once_in_order_while_partitions_move(
    infra: Infrastructure, database_url: str, request: pytest.FixtureRequest
) -> None:
    catalog = read_catalog_file(default_catalog_path())
    stream = StreamGenerator(SPEC, catalog, Clock("Europe/Stockholm").today()).generate()
    total = len(stream.model.inbox)
    started = time.monotonic()
    async with open_stack(request.node.name, infra.kafka_bootstrap, database_url, infra) as stack:
        inbound = {TopicPartition(t, p) for t in stack.topics.inbound for p in range(PARTITIONS)}
        progress = Progress()
        async with GroupAssignments(stack.bootstrap, stack.groups_group).watching() as group:
            # Either failing (a wait timed out) ends both.
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(produce(stack, stream, progress))
                moving = tasks.create_task(move_partitions(stack, stream, group, progress))
            processes, after = moving.result()
            await settle(stack, total, timeout=TIMEOUT)
            lag = await caught_up(stack, stack.groups_group, stack.topics.inbound)
        victim = processes.killed
        survivor = "C" if victim == "A" else "A"
        await processes.note_processed(survivor)
        await processes.note_processed(victim, f"{victim} again")
        settled_seconds = time.monotonic() - started
        reconciliation = await reconcile(stack, stream.model)
        order, order_figures = order_problems(
            stream, await read_topic(stack.bootstrap, stack.topics.events)
        )
        prompts, prompt_figures = prompt_problems(
            stream, await read_topic(stack.bootstrap, stack.topics.prompts)
        )
        failed = {n: failed_batches(h.log_path) for n, h in processes.handles.items()}
        outbox_left = await stack.outbox_count()

    def owned(move: str, name: str, run: int = 0) -> set[TopicPartition]:
        return set(after[move].members.get(processes.member(name, run), ()))

    everyone = {name: owned("C joins", name) for name in "ABC"}
    moved = sum(1 for owners in group.owners().values() if len(owners) > 1)
    print(
        f"\nscale-out: {len(stream.inputs)} inputs ({total} distinct); moves at inputs sent "
        f"{progress.moves}; {victim} killed at freeze {processes.freezes} with "
        f"{processes.redelivered} starts and commands applied, not committed; partitions "
        f"that changed hands {moved} of {len(inbound)} ({len(group.snapshots)} group "
        f"snapshots); records applied per process {processes.processed}; "
        f"{reconciliation.figures}; {order_figures}; {prompt_figures}; "
        f"{settled_seconds:.0f} s to settle, {time.monotonic() - started:.0f} s in all"
    )

    # Every record applied once: the database equals the model, each command has one
    # result, published once; each start one prompt record; the group caught up.
    zero = zero_problem_figures(reconciliation)
    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    assert reconciliation.figures["events_resent_copies"] == 0, reconciliation.figures
    assert prompts == [], "\n".join(prompts[:20])
    assert not any(lag.values()) and outbox_left == 0, (lag, outbox_left)
    # Per customer, in the order sent.
    assert order == [], "\n".join(order[:20])
    # A, B and C owned partitions side by side, all of them between the three; the one
    # killed owned some, which the other took, and took some back when started again.
    assert all(everyone.values()) and set().union(*everyone.values()) == inbound, everyone
    assert owned("B stops", victim) and owned("killed", survivor) == inbound
    assert owned("started again", victim, 1) and owned("started again", survivor)
    assert all(processes.processed.get(n, 0) > 0 for n in "ABC"), processes.processed
    assert sum(failed.values()) == 0, f"batches failed and were replayed: {failed}"
    # Every move began with inputs still to be sent.
    assert [m for m, _ in progress.moves] == [
        "B joins",
        "C joins",
        "B stops",
        "killed",
        "started again",
    ]
    assert all(0 < sent < len(stream.inputs) for _, sent in progress.moves), progress.moves
