"""Compaction equivalence with the export as a real process that is SIGKILLed while
events stream in, then restarted: the topic's last value per key still equals the
database's state, and every re-sent record is the very same record."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess, free_port
from services.groups.bootstrap import GroupsSettingsBundle
from services.groups.service_layer.outgoing import membership_id_for
from tests.integration.conftest import ACTOR, NurseClient
from tests.integration.export.conftest import (
    assert_live_matches_db,
    db_records,
    export_env,
    export_settings,
    last_values,
    leaks,
    record_bytes,
    wait_for_state,
)
from tests.integration.export.seed import seeded_personnummer
from tests.kafka_tools import KafkaTestClient, cloudevent

CUSTOMERS = 40


async def test_sigkilled_export_process_converges_to_the_database_state(
    nurse: NurseClient,
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    infra: Infrastructure,
    tmp_path: Path,
) -> None:
    settings = export_settings(groups_settings)
    commands_topic = groups_settings.topics.commands
    pnrs = [seeded_personnummer(1000 + i) for i in range(CUSTOMERS)]
    sent: list[str] = []

    async def send(type_: str, pnr: str, **fields: Any) -> str:
        event = cloudevent(
            f"customer_group.{type_}", {"personnummer": pnr, "actor": ACTOR, **fields}
        )
        await kafka.send_event(commands_topic, event, key=pnr)
        sent.append(event["id"])
        return str(event["id"])

    port = free_port()
    export = ServiceProcess(
        "services.export",
        export_env(settings, EXPORT_HTTP_PORT=str(port)),
        port=port,
        log_path=tmp_path / "export.log",
    )
    await asyncio.to_thread(export.start)
    try:
        # A burst the groups service turns into events while the export consumes them;
        # membership ids are derived from command ids, so corrections need not wait.
        flu: dict[str, str] = {}
        for i, pnr in enumerate(pnrs):
            flu[pnr] = membership_id_for(
                await send("add", pnr, group_code="INFLUENSA", reference_code=f"K-{i}")
            )
            await send("update", pnr, membership_id=flu[pnr], subgroup_code="ALDER_65_PLUS")
            if i % 2 == 0:
                await send("remove", pnr, membership_id=flu[pnr])
        await kafka.read_until(settings.topics.export, lambda rs: len(rs) >= 10)
        await asyncio.to_thread(export.kill)  # mid-stream: events keep arriving
        # Restart at once; the new member joins when the broker expires the killed one
        # (session timeout, ~10 s), meanwhile more changes arrive.
        restarted = asyncio.create_task(asyncio.to_thread(export.start))
        for i, pnr in enumerate(pnrs):
            await send("add", pnr, group_code="COVID_19", subgroup_code="REKOMMENDERAD")
            if i % 2 == 1:
                await send("remove", pnr, membership_id=flu[pnr])
        await nurse.events.wait_for(lambda e: e["data"].get("command_id") in sent, count=len(sent))
        await restarted
        expected = await db_records(settings)
        records = await wait_for_state(kafka, settings.topics.export, expected, timeout=60)
    finally:
        await asyncio.to_thread(export.stop)

    assert_live_matches_db(last_values(records), expected)
    # Re-sent after the kill: same key and CloudEvent id means the same bytes.
    values: dict[tuple[bytes, str], set[bytes]] = defaultdict(set)
    for record in records:
        values[(record.key, json.loads(record.value)["id"])].add(record.value)
    assert all(len(v) == 1 for v in values.values())
    assert not any(leaks(record_bytes(r), pnrs) for r in records)
    assert len(expected) == CUSTOMERS * 2
