"""Backfill from the groups database: it reproduces the live topic's state, is
idempotent, and an interrupted run (by --limit, or SIGKILL after a chunk) resumes from
its checkpoint and converges to the same state."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.export.adapters.checkpoint import FileCheckpointStore
from services.export.domain.checkpoint import Phase
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    REPO_ROOT,
    SCENARIO_PNRS,
    assert_live_matches_db,
    backfill_in_process,
    db_records,
    export_env,
    export_settings,
    fresh_topic,
    last_values,
    leaks,
    mixed_scenario,
    run_cli,
    running_export_service,
    stockholm_today,
    wait_for_state,
    with_export_topic,
)
from tests.integration.export.seed import prepare_schema, seed_memberships
from tests.kafka_tools import KafkaTestClient

ROWS = 10_000


async def read_state(kafka: KafkaTestClient, topic: str, keys: int) -> list[Any]:
    return await kafka.read_until(topic, lambda rs: len(last_values(rs)) >= keys)


async def test_backfill_reproduces_the_live_topic_and_resumes(
    nurse: NurseClient,
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    tmp_path: Path,
) -> None:
    settings = export_settings(groups_settings)
    async with running_export_service(settings):
        await mixed_scenario(nurse, stockholm_today(settings))
        expected = await db_records(settings)
        live = last_values(await wait_for_state(kafka, settings.topics.export, expected))

    # Into an empty topic: the database's records, byte for byte, and the live state.
    fresh = with_export_topic(settings, fresh_topic(settings))
    report = await backfill_in_process(fresh, batch_size=2)
    assert report.complete and report.published >= len(expected)
    records = await read_state(kafka, fresh.topics.export, len(expected))
    assert last_values(records) == expected
    assert_live_matches_db(live, last_values(records))

    # Again: the same records once more (same bytes), so the state does not move.
    await backfill_in_process(fresh, batch_size=5)
    again = await kafka.read_until(fresh.topics.export, lambda rs: len(rs) >= 2 * len(records))
    assert last_values(again) == expected
    by_key: dict[bytes, set[bytes]] = {}
    for record in again:
        by_key.setdefault(record.key, set()).add(record.value)
    assert all(len(values) == 1 for values in by_key.values())

    # The CLI, stopped by --limit and resumed from its checkpoint.
    topic = fresh_topic(settings)
    env = export_env(with_export_topic(settings, topic))
    checkpoint = tmp_path / "backfill.json"
    args = ("backfill", "--checkpoint", str(checkpoint), "--batch-size", "2", "--no-progress")
    first = await run_cli(env, *args, "--limit", "3")
    assert first.returncode == 0, first.stderr
    assert first.summary is not None
    assert (first.summary["complete"], first.summary["published"]) == (False, 3)
    saved = FileCheckpointStore(checkpoint).load()
    assert saved is not None and saved.phase is Phase.MAIN and saved.published == 3
    assert saved.topic == topic and set(saved.done) == {"memberships"}
    assert len(await kafka.read_all(topic, timeout=1.0)) == 3
    rest = await run_cli(env, *args)
    assert rest.returncode == 0, rest.stderr
    assert rest.summary is not None and rest.summary["complete"] is True
    assert last_values(await read_state(kafka, topic, len(expected))) == expected
    complete = FileCheckpointStore(checkpoint).load()
    assert complete is not None and complete.phase is Phase.COMPLETE
    for result in (first, rest):
        assert not leaks((result.stderr + json.dumps(result.summary)).encode(), SCENARIO_PNRS)


async def test_sigkilled_backfill_resumes_from_its_checkpoint(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, tmp_path: Path
) -> None:
    settings = export_settings(groups_settings)
    await prepare_schema(settings.database.database_url)
    await seed_memberships(settings.database.database_url, ROWS)
    checkpoint = tmp_path / "backfill.json"
    args = ("backfill", "--checkpoint", str(checkpoint), "--batch-size", "250", "--no-progress")
    env = export_env(settings)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.export",
        *args,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    store = FileCheckpointStore(checkpoint)
    try:
        for _ in range(6000):  # poll the file (30 s at most) for the first chunk's mark
            saved = store.load()
            if saved is not None and saved.published > 0:
                break
            await asyncio.sleep(0.005)
    finally:
        process.kill()  # SIGKILL: no handler runs
        await process.wait()
    killed = store.load()
    assert killed is not None and killed.phase is Phase.MAIN
    assert 250 <= killed.published < ROWS, "killed after the first chunk, before the end"

    resumed = await run_cli(env, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.summary is not None and resumed.summary["complete"] is True
    expected = await db_records(settings)
    assert len(expected) == ROWS
    assert last_values(await read_state(kafka, settings.topics.export, len(expected))) == expected
