"""The Parquet / CSV snapshot holds the topic's state: same keys, same field values."""

from __future__ import annotations

import csv
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq

from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.service_layer import messages
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    comparable,
    db_records,
    export_env,
    export_settings,
    last_values,
    mixed_scenario,
    run_cli,
    running_export_service,
    stockholm_today,
    wait_for_state,
)
from tests.kafka_tools import KafkaTestClient

KEYS = {"membership_records": "membership_id", "vaccination_records": "vaccination_id"}


def parquet_state(path: Path, key: str, zone: str) -> dict[str, dict[str, Any]]:
    """Rows back in the topic's JSON form: dates and instants as ISO text, nested too."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(ZoneInfo(zone)).isoformat()
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    rows = pq.read_table(path).to_pylist()
    return {row[key]: {k: plain(v) for k, v in row.items()} for row in rows}


def csv_state(path: Path, key: str) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return {row[key]: row for row in csv.DictReader(file)}


def as_csv(data: dict[str, Any]) -> dict[str, str]:
    """A record's data as CSV text: null empty, `groups`, `vaccine` and actors as JSON, booleans
    as JSON writes them, the rest as written."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return json.dumps(value)
        if isinstance(value, (list, dict)):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return str(value)

    return {k: text(v) for k, v in data.items()}


async def test_snapshot_equals_the_topic_state(
    nurse: NurseClient,
    groups_service: GroupsService,
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    tmp_path: Path,
) -> None:
    settings = export_settings(groups_settings)
    async with running_export_service(settings):
        scenario = await mixed_scenario(nurse, stockholm_today(settings))
        expected = await db_records(settings)
        topic = last_values(await wait_for_state(kafka, settings.topics.export, expected))

    out = tmp_path / "snapshot"
    args = ("snapshot", "--out", str(out), "--batch-size", "2", "--no-progress")
    result = await run_cli(export_env(settings), *args)
    assert result.returncode == 0, result.stderr
    assert result.summary is not None
    memberships, doses = len(scenario.memberships), len(scenario.vaccinations)
    catalog = messages.catalog_document(groups_service.catalog.current)["groups"]
    assert result.summary["rows"] == {
        "memberships": memberships,
        "vaccination_confirmations": doses,
        "catalog_groups": len(catalog),
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "catalog_groups.csv",
        "catalog_groups.parquet",
        "membership_records.csv",
        "membership_records.parquet",
        "vaccination_records.csv",
        "vaccination_records.parquet",
    ]
    membership_file = pq.ParquetFile(out / "membership_records.parquet")
    assert membership_file.metadata.num_row_groups == (memberships + 1) // 2  # one per chunk
    schema = membership_file.schema_arrow
    assert schema.field("valid_from").type == pa.date32()
    assert schema.field("updated_at").type == pa.timestamp("us", tz=settings.timezone)
    assert schema.field("created_at").type == pa.timestamp("us", tz=settings.timezone)
    assert pa.types.is_struct(schema.field("created_by").type)
    assert "personnummer" not in schema.names
    groups_type = pq.read_schema(out / "vaccination_records.parquet").field("groups").type
    assert pa.types.is_list(groups_type) and pa.types.is_struct(groups_type.value_type)

    snapshot: dict[str, dict[str, Any]] = {}
    for stem, key in KEYS.items():
        from_parquet = parquet_state(out / f"{stem}.parquet", key, settings.timezone)
        from_csv = csv_state(out / f"{stem}.csv", key)
        assert from_csv == {k: as_csv(v) for k, v in from_parquet.items()}
        snapshot.update(from_parquet)
    # Exactly the records the database's state gives (what the backfill publishes) ...
    assert snapshot == {k: json.loads(v)["data"] for k, v in expected.items()}
    # ... and the live topic's state, up to the groups service's clock gap (conftest).
    assert set(snapshot) == set(topic)
    for key, value in topic.items():
        live = comparable(value)["data"]
        assert {k: v for k, v in snapshot[key].items() if k in live} == live
    # The catalog table: every group (retired ones too) as GET /catalog and the catalog
    # topic give it, so the codes in the records resolve as of the same moment.
    by_code = {g["group_code"]: g for g in catalog}
    assert parquet_state(out / "catalog_groups.parquet", "group_code", settings.timezone) == by_code
    assert csv_state(out / "catalog_groups.csv", "group_code") == {
        code: as_csv(g) for code, g in by_code.items()
    }
    assert by_code["COVID"]["valid_to"] == "2023-09-27"
