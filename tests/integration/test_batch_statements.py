"""The batch read's plan against the real database: what it costs must not grow with
the number of events ever applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from services.common.db import create_engine
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate
from services.groups.adapters.batch_writer import READ

APPLIED = 30_000


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


@pytest.mark.parametrize("analyzed", [False, True], ids=["stale statistics", "analyzed"])
async def test_applied_events_are_probed_by_key_not_scanned(
    database_url: str, analyzed: bool
) -> None:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    await migrate.upgrade(engine)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO inbox (topic, event_id)"
                " SELECT 'vaccination.started.v1', 'event-' || n FROM generate_series(1, :n) n"
            ),
            {"n": APPLIED},
        )
    if analyzed:
        async with engine.connect() as connection:
            await connection.execute(text("COMMIT"))
            await connection.execute(text("ANALYZE inbox"))
    # A large batch (500 events), half of them applied before.
    ids = [f"event-{n}" for n in range(APPLIED - 4_990, APPLIED + 5_010, 20)]
    params = {
        "inbox_topics": ["vaccination.started.v1"] * len(ids),
        "inbox_ids": ids,
        "personnummer": [],
        "booking_ids": [],
        "vaccination_ids": [],
        "prompt_ids": [],
        "dose_vaccination_ids": [],
        "dose_customers": [],
    }
    async with engine.connect() as connection:
        explained = await connection.scalar(
            text(f"EXPLAIN (ANALYZE, FORMAT JSON) {READ.text}"), params
        )
        processed = (await connection.execute(READ, params)).one().processed
    await engine.dispose()

    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    inbox_scans = [n for n in nodes(plan) if n.get("Relation Name") == "inbox"]
    assert inbox_scans, "the plan reads the inbox"
    assert {n["Node Type"] for n in inbox_scans} <= {"Index Scan", "Index Only Scan"}, inbox_scans
    applied_before = [n for n, event_id in enumerate(ids, 1) if int(event_id[6:]) <= APPLIED]
    assert sorted(processed) == applied_before
