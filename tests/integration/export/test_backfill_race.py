"""A backfill racing live changes of the same keys, over the real broker and database,
with the live export running: as each chunk goes to the broker, the keys in it move to
their next version (a nurse's correction, a corrected registration) and the live export
publishes that version first. The last record per key must still be the newest version,
the database's state."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any

from services.export.bootstrap import ExportSettingsBundle
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    PNR_A,
    PNR_B,
    PNR_C,
    backfill_in_process,
    db_records,
    export_settings,
    running_export_service,
    wait_for_state,
)
from tests.kafka_tools import KafkaTestClient, keys_behind_newest

# Moves per key: the first lands while the backfill's first record of the key is on its
# way, the next while its second is.
ROUNDS = 2


class RacingSink:
    """Stands before the backfill's publisher. Before a chunk reaches the broker, the
    keys in it move to their next version and the live export publishes it, at most
    `ROUNDS` times per key: the backfill's records of the older version come after."""

    def __init__(
        self,
        inner: Any,
        nurse: NurseClient,
        settings: ExportSettingsBundle,
        kafka: KafkaTestClient,
        *,
        memberships: dict[str, str],  # membership_id -> personnummer
        doses: dict[str, str],  # vaccination_id -> personnummer
    ) -> None:
        self.inner, self.nurse, self.settings, self.kafka = inner, nurse, settings, kafka
        self.memberships, self.doses = memberships, doses
        self.moves: dict[str, int] = {}
        self.references = itertools.count(1)

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        keys = [k.decode() for k, _ in messages]
        moving = [k for k in keys if self.moves.get(k, 0) < ROUNDS]
        for key in moving:
            self.moves[key] = self.moves.get(key, 0) + 1
            if key in self.memberships:
                answer = await self.nurse.command(
                    "update",
                    self.memberships[key],
                    membership_id=key,
                    reference_code=f"R-{next(self.references)}",
                )
                assert answer["type"] == "customer_group.updated", answer["data"]
            elif key in self.doses:  # a corrected time is a new version of the record
                await self.nurse.answer(await self.nurse.register(key, self.doses[key]))
        if moving:  # the live export published the new versions (the backfill has not)
            expected = await db_records(self.settings)
            wanted = {(k.encode(), expected[k]) for k in moving}

            def published(records: list[Any]) -> bool:
                return wanted <= {(r.key, r.value) for r in records}

            await self.kafka.read_until(self.settings.topics.export, published)
        return await self.inner.publish(messages)


async def test_a_backfill_racing_live_changes_leaves_the_newest_version_last(
    nurse: NurseClient, groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    settings = export_settings(groups_settings)
    topic = settings.topics.export
    async with running_export_service(settings):
        memberships: dict[str, str] = {}
        for pnr in (PNR_A, PNR_B, PNR_C):
            added = await nurse.command("add", pnr, group_code="INFLUENSA")
            memberships[added["data"]["membership"]["membership_id"]] = pnr
        doses = {"v-race-1": PNR_A, "v-race-2": PNR_B}
        for vaccination_id, pnr in doses.items():
            await nurse.answer(await nurse.register(vaccination_id, pnr))
        before = await db_records(settings)
        await wait_for_state(kafka, topic, before)

        racing: list[RacingSink] = []

        def race(inner: Any) -> RacingSink:
            racing.append(
                RacingSink(inner, nurse, settings, kafka, memberships=memberships, doses=doses)
            )
            return racing[0]

        report = await backfill_in_process(settings, batch_size=100, wrap_sink=race)
        assert report.complete
        expected = await db_records(settings)
        records = await wait_for_state(kafka, topic, expected, timeout=60)

    # Every key moved twice while the backfill published it, and was published again.
    assert racing[0].moves == dict.fromkeys([*memberships, *doses], ROUNDS)
    version = {k: json.loads(v)["data"]["version"] for k, v in expected.items()}
    assert all(version[k] > json.loads(before[k])["data"]["version"] for k in version)
    assert keys_behind_newest(records) == {}
    assert report.republished >= len(expected)
