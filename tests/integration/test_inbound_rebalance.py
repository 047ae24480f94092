"""Two groups services in one consumer group over the real broker and database, the
first slowed: its batches are held before they are applied for longer than a revocation
waits for them, while a rebalance moves partitions to the second and back (A -> B -> A).

The held batches are applied in the end (the inbox makes that harmless), but their
offsets, of a generation since revoked, are never committed: the group's committed
offsets never go back over what the second committed meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

from devinfra.provider import Infrastructure
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.service_layer.messagebus import DecodedBatch
from tests.integration.conftest import (
    ACTOR,
    customers_on_every_partition,
    nurse_client,
    running_groups_service,
    subscriber_consumer,
    wait_for_assignment,
)
from tests.kafka_tools import CommittedOffsets, KafkaTestClient, cloudevent, record_ends

# Longer than a revocation waits for batches in flight (BatchPipeline.drain, 15 s), and
# than the second service needs to join, apply, commit and leave again.
HOLD_SECONDS = 25.0


class HeldApplier:
    """Once armed, batches wait until `HOLD_SECONDS` after the first of them before
    they are applied (the process stays alive and in its group meanwhile)."""

    def __init__(self, service: GroupsService) -> None:
        self.armed = False
        self.until = 0.0
        self.holding = asyncio.Event()
        apply = service.processor.apply

        async def held(batch: DecodedBatch) -> Any:
            loop = asyncio.get_running_loop()
            if self.armed:
                self.armed = False
                self.until = loop.time() + HOLD_SECONDS
                self.holding.set()
            if loop.time() < self.until:
                await asyncio.sleep(self.until - loop.time())
            return await apply(batch)

        service.processor.apply = held  # type: ignore[method-assign]


async def send_updates(
    kafka: KafkaTestClient, topic: str, memberships: dict[str, str], reference: str
) -> None:
    """Update commands, without waiting for their answers."""
    for pnr, membership_id in memberships.items():
        event = cloudevent(
            "customer_group.update",
            {
                "personnummer": pnr,
                "actor": ACTOR,
                "membership_id": membership_id,
                "reference_code": reference,
            },
        )
        await kafka.send_event(topic, event, key=pnr)


async def test_no_stale_inbound_commit_after_a_move_a_b_a(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, infra: Infrastructure
) -> None:
    settings = groups_settings
    inbound = settings.topics.inbound
    partitions = settings.kafka.inbound_partitions
    pnrs = customers_on_every_partition(partitions, 2)
    first = GroupsService(settings)
    held = HeldApplier(first)
    watch = CommittedOffsets(settings.kafka.bootstrap_servers, settings.groups.consumer_group)
    async with (
        watch.watching(),
        running_groups_service(settings, first),
        nurse_client(first, kafka, infra) as nurse,
    ):
        memberships: dict[str, str] = {}
        for pnr in pnrs:
            added = await nurse.command("add", pnr, group_code="INFLUENSA")
            memberships[pnr] = added["data"]["membership"]["membership_id"]
        await watch.wait_for(await record_ends(kafka, *inbound))

        # Every partition's next batch is held by the first service.
        consumer = subscriber_consumer(first.broker)
        assigned = consumer.assignment()
        consumer.pause(*assigned)
        await send_updates(kafka, settings.topics.commands, memberships, "R-2")
        held.armed = True
        consumer.resume(*assigned)
        await asyncio.wait_for(held.holding.wait(), 30)

        async with running_groups_service(settings) as second:  # A -> B
            moved = await wait_for_assignment(second.broker)
            # The second applies the held records and newer ones, and commits past them.
            await send_updates(kafka, settings.topics.commands, memberships, "R-3")
            ends = await record_ends(kafka, *inbound)
            await watch.wait_for({tp: end for tp, end in ends.items() if tp in moved})
        await wait_for_assignment(first.broker, len(inbound) * partitions)  # B -> A
        # The held batches are applied now at the latest; a stale offset of theirs would
        # be committed within the commit interval.
        await asyncio.sleep(max(0.0, held.until - asyncio.get_running_loop().time()) + 3.0)
        await send_updates(kafka, settings.topics.commands, memberships, "R-4")
        final = await record_ends(kafka, *inbound)
        await watch.wait_for(final)
        updated = await nurse.events.wait_for(
            lambda e: e["type"] == "customer_group.updated", count=3 * len(memberships)
        )

    assert watch.backwards == [], f"committed offsets moved back: {watch.backwards}"
    # Each update applied once (the held copies found them in the inbox).
    versions = sorted(e["data"]["membership"]["version"] for e in updated)
    assert versions == sorted([2, 3, 4] * len(memberships)), versions
