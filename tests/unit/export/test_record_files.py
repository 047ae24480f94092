"""Parquet and CSV files of export records: typed Parquet, text CSV, atomic commit."""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq

from services.export.adapters.record_files import (
    ParquetCsvFile,
    catalog_columns,
    membership_columns,
    vaccination_columns,
)
from services.export.domain.records import ExportRecord, Pseudonymizer, RecordBuilder
from services.groups.bootstrap import read_catalog_file
from services.groups.catalog import default_catalog_path
from services.groups.service_layer import messages

ZONE = "Europe/Stockholm"
BUILDER = RecordBuilder(Pseudonymizer(b"unit-test-pseudonym-key-0123456789"), ZoneInfo(ZONE))
AT = datetime(2026, 11, 26, 12, 0, 0, 123_456, tzinfo=UTC)


GIVEN = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # the 26th in Stockholm


def dose(n: int, groups: list[dict[str, str | None]], *, registered: bool = True) -> ExportRecord:
    return BUILDER.vaccination(
        vaccination_id=f"v-{n}",
        personnummer="191212121212",
        unit_id="unit-1",
        administered_at=GIVEN if registered else None,
        vaccine={"code": "J07BN01", "name": "Comirnaty", "dose_number": 3} if registered else None,
        confirmed_at=AT,
        basis="registration" if registered else "popup",
        memberships=groups,
        missing_group=not groups,
        status="completed",
        version=1,
        updated_at=AT,
    )


def test_each_write_is_a_row_group_and_values_keep_their_meaning(tmp_path: Path) -> None:
    file = ParquetCsvFile(
        tmp_path, "vaccination_records", vaccination_columns(ZONE, include_personnummer=False)
    )
    group = {
        "membership_id": "m-1",
        "group_code": "OVRIGT",
        "group_name": "Övrigt",
        "subgroup_code": "RESEVACCINATIONER",
        "subgroup_name": "Övriga resevaccinationer",
        "reference_code": None,
    }
    file.write([dose(1, [group]), dose(2, [], registered=False)])
    file.write([dose(3, [group, {**group, "group_code": "INFLUENSA"}])])
    file.commit()

    parquet = pq.ParquetFile(tmp_path / "vaccination_records.parquet")
    assert parquet.metadata.num_row_groups == 2
    rows = parquet.read().to_pylist()
    assert [r["vaccination_id"] for r in rows] == ["v-1", "v-2", "v-3"]
    assert rows[0]["groups"] == [group] and rows[1]["groups"] == []
    assert rows[0]["confirmed_at"] == AT and rows[0]["administered_at"] == GIVEN
    assert rows[0]["vaccine"] == {"code": "J07BN01", "name": "Comirnaty", "dose_number": 3}
    assert rows[1]["vaccine"] is None and rows[1]["administered_at"] is None
    assert (rows[0]["missing_group"], rows[1]["missing_group"]) == (False, True)
    assert (rows[0]["basis"], rows[1]["basis"], rows[0]["status"]) == (
        "registration",
        "popup",
        "completed",
    )
    assert parquet.schema_arrow.field("confirmed_at").type == pa.timestamp("us", tz=ZONE)
    assert parquet.schema_arrow.field("administered_at").type == pa.timestamp("us", tz=ZONE)
    assert parquet.schema_arrow.field("missing_group").type == pa.bool_()
    with (tmp_path / "vaccination_records.csv").open(encoding="utf-8", newline="") as handle:
        text_rows = list(csv.DictReader(handle))
    assert text_rows[0]["confirmed_at"] == "2026-11-26T13:00:00.123456+01:00"
    assert text_rows[0]["administered_at"] == "2026-11-26T00:30:00+01:00"
    assert text_rows[0]["groups"] == (
        '[{"membership_id":"m-1","group_code":"OVRIGT","group_name":"Övrigt",'
        '"subgroup_code":"RESEVACCINATIONER","subgroup_name":"Övriga resevaccinationer",'
        '"reference_code":null}]'
    )
    assert text_rows[0]["vaccine"] == '{"code":"J07BN01","name":"Comirnaty","dose_number":3}'
    assert (text_rows[0]["missing_group"], text_rows[1]["missing_group"]) == ("false", "true")
    assert text_rows[1]["groups"] == "[]" and text_rows[0]["version"] == "1"
    assert text_rows[1]["vaccine"] == "" and text_rows[1]["administered_at"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vaccination_records.csv",
        "vaccination_records.parquet",
    ]


def test_membership_dates_are_dates_and_null_is_an_empty_csv_field(tmp_path: Path) -> None:
    columns = membership_columns(ZONE, include_personnummer=True)
    file = ParquetCsvFile(tmp_path, "membership_records", columns)
    view = {
        "membership_id": "m-1",
        "group_code": "PNEUMOKOCK",
        "group_name": "Pneumokockvaccin",
        "subgroup_code": None,
        "subgroup_name": None,
        "reference_code": None,
        "valid_from": "2026-10-01",
        "valid_to": None,
        "status": "active",
        "version": 1,
        "created_at": "2026-10-01T08:00:00+00:00",
        "created_by": {"user_id": "nurse-1", "unit_id": "unit-1"},
        "updated_by": None,
    }
    opted_in = RecordBuilder(BUILDER.pseudonymizer, BUILDER.zone, include_personnummer=True)
    file.write([opted_in.membership(view, "191212121212", AT)])
    file.commit()
    table = pq.read_table(tmp_path / "membership_records.parquet")
    [row] = table.to_pylist()
    assert row["valid_from"] == date(2026, 10, 1) and row["valid_to"] is None
    assert row["personnummer"] == "191212121212"  # the column exists only when opted in
    assert row["created_at"] == datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
    assert table.schema.field("created_at").type == pa.timestamp("us", tz=ZONE)
    assert row["created_by"] == {"user_id": "nurse-1", "unit_id": "unit-1"}
    assert row["updated_by"] is None
    with (tmp_path / "membership_records.csv").open(encoding="utf-8", newline="") as handle:
        [text] = list(csv.DictReader(handle))
    assert text["subgroup_code"] == "" and text["valid_from"] == "2026-10-01"
    assert text["created_at"] == "2026-10-01T10:00:00+02:00"
    assert text["created_by"] == '{"user_id":"nurse-1","unit_id":"unit-1"}'
    assert text["updated_by"] == ""
    assert list(text) == [c.name for c in columns]


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    file = ParquetCsvFile(
        tmp_path, "vaccination_records", vaccination_columns(ZONE, include_personnummer=False)
    )
    file.write([dose(1, [])])
    file.abort()
    assert list(tmp_path.iterdir()) == []


def test_csv_cells_a_spreadsheet_would_run_are_text_and_parquet_keeps_the_value(
    tmp_path: Path,
) -> None:
    columns = membership_columns(ZONE, include_personnummer=False)
    file = ParquetCsvFile(tmp_path, "membership_records", columns)
    formulas = ['=HYPERLINK("x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain-text"]
    views = [
        {
            "membership_id": f"m-{n}",
            "group_code": "COVID",
            "group_name": "Covid-19",
            "subgroup_code": None,
            "subgroup_name": None,
            "reference_code": code,
            "valid_from": "2026-10-01",
            "valid_to": None,
            "status": "active",
            "version": 1,
        }
        for n, code in enumerate(formulas)
    ]
    file.write([BUILDER.membership(v, "191212121212", AT) for v in views])
    file.commit()
    with (tmp_path / "membership_records.csv").open(encoding="utf-8", newline="") as handle:
        cells = [row["reference_code"] for row in csv.DictReader(handle)]
    assert cells == ["'" + f for f in formulas[:-1]] + ["plain-text"]
    parquet = pq.read_table(tmp_path / "membership_records.parquet").to_pylist()
    assert [r["reference_code"] for r in parquet] == formulas
    assert {r["key_id"] for r in parquet} == {BUILDER.pseudonymizer.key_id}


def test_the_catalog_table_has_the_catalog_groups_fields(tmp_path: Path) -> None:
    catalog = read_catalog_file(default_catalog_path())
    groups = messages.catalog_document(catalog)["groups"]
    file = ParquetCsvFile(tmp_path, "catalog_groups", catalog_columns())
    file.write_rows(groups)
    file.commit()
    rows = pq.read_table(tmp_path / "catalog_groups.parquet").to_pylist()
    assert [list(r) for r in rows] == [list(g) for g in groups]
    covid = next(r for r in rows if r["group_code"] == "COVID")
    assert (covid["valid_from"], covid["valid_to"]) == (date(1901, 1, 1), date(2023, 9, 27))
    assert covid["subgroups"] == [
        {
            "subgroup_code": "OVRIG_ALLMANHET_18_64",
            "name": "08. Övrig allmänhet 18-64 år",
            "valid_from": date(1901, 1, 1),
            "valid_to": date(2023, 9, 27),
        }
    ]
    with (tmp_path / "catalog_groups.csv").open(encoding="utf-8", newline="") as handle:
        text = {row["group_code"]: row for row in csv.DictReader(handle)}
    assert json.loads(text["COVID"]["subgroups"]) == next(
        g["subgroups"] for g in groups if g["group_code"] == "COVID"
    )
    assert text["INFLUENSA"]["valid_to"] == "" and text["COVID"]["valid_to"] == "2023-09-27"
    assert text["COVID"]["catalog_version"] == catalog.version
