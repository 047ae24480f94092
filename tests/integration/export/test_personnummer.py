"""No personnummer in the default export (topic, backfill, snapshot, logs); putting it in
takes the explicit EXPORT_INCLUDE_PERSONNUMMER=true."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    PNR_A,
    PNR_C,
    SCENARIO_PNRS,
    backfill_in_process,
    db_records,
    export_env,
    export_settings,
    fresh_topic,
    last_values,
    leaks,
    mixed_scenario,
    record_bytes,
    run_cli,
    running_export_service,
    stockholm_today,
    wait_for_state,
    with_export_topic,
)
from tests.kafka_tools import KafkaTestClient


async def test_default_export_carries_no_personnummer(
    nurse: NurseClient,
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.export")
    settings = export_settings(groups_settings)
    async with running_export_service(settings):
        await mixed_scenario(nurse, stockholm_today(settings))
        expected = await db_records(settings)
        live = await wait_for_state(kafka, settings.topics.export, expected)
    backfilled = with_export_topic(settings, fresh_topic(settings))
    await backfill_in_process(backfilled)
    copied = await kafka.read_until(
        backfilled.topics.export, lambda rs: len(last_values(rs)) >= len(expected)
    )
    out = tmp_path / "snapshot"
    result = await run_cli(export_env(settings), "snapshot", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr

    assert len(live) >= len(expected) and len(copied) >= len(expected)
    for record in [*live, *copied]:
        assert not leaks(record_bytes(record), SCENARIO_PNRS), record.key
        assert "personnummer" not in json.loads(record.value)["data"]
    for path in out.iterdir():
        assert not leaks(path.read_bytes(), SCENARIO_PNRS), path.name
    assert not leaks(result.stderr.encode(), SCENARIO_PNRS)
    assert not leaks(caplog.text.encode(), SCENARIO_PNRS)


async def test_include_personnummer_is_an_explicit_opt_in(
    nurse: NurseClient,
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    tmp_path: Path,
) -> None:
    settings = export_settings(groups_settings, include_personnummer=True)
    async with running_export_service(settings):
        await nurse.command("add", PNR_A, group_code="INFLUENSA")
        prompt = (await nurse.start("v-opt-in", PNR_C))["data"]["prompt_id"]
        await nurse.command("add", PNR_C, group_code="OVRIGT", subgroup_code="RESEVACCINATIONER")
        await nurse.command("prompt_close", PNR_C, prompt_id=prompt, vaccination_id="v-opt-in")
        expected = await db_records(settings)
        live = last_values(await wait_for_state(kafka, settings.topics.export, expected))

    owners = {json.loads(v)["data"]["personnummer"] for v in live.values()}
    assert owners == {PNR_A, PNR_C}
    assert json.loads(live["v-opt-in"])["data"]["personnummer"] == PNR_C
    # The backfill and the snapshot follow the same switch.
    backfilled = with_export_topic(settings, fresh_topic(settings))
    await backfill_in_process(backfilled)
    copied = await kafka.read_until(
        backfilled.topics.export, lambda rs: len(last_values(rs)) >= len(expected)
    )
    assert last_values(copied) == expected
    out = tmp_path / "snapshot"
    result = await run_cli(export_env(settings), "snapshot", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "membership_records.parquet").to_pylist()
    assert {row["personnummer"] for row in rows} == {PNR_A, PNR_C}
