"""Export records as files: one Parquet and one CSV file per record type.

Parquet is typed for the warehouse (dates as date32, instants as timestamps in the
clinics' zone, `groups` and the catalog's `subgroups` as list<struct>, `vaccine` as a
struct); CSV keeps every value exactly as the topic's JSON has it (lists and `vaccine` as
JSON strings, booleans as `true`/`false`, null as an empty field). The catalog table has
the fields of `customer_group.catalog_group`. Both are written under a `.partial` name and
renamed on commit, so a reader never sees half a snapshot.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from services.export.domain.records import GROUP_FIELDS, MEMBERSHIP_FIELDS, ExportRecord

GROUP_STRUCT = pa.struct([(name, pa.string()) for name in GROUP_FIELDS])
VACCINE_STRUCT = pa.struct(
    [("code", pa.string()), ("name", pa.string()), ("dose_number", pa.int32())]
)
# created_by / updated_by: a struct in Parquet, the JSON object (or empty) in CSV.
ACTOR_STRUCT = pa.struct([("user_id", pa.string()), ("unit_id", pa.string())])


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    to_parquet: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _date(value: Any) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _instant(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def membership_columns(zone: str, *, include_personnummer: bool) -> list[Column]:
    types: dict[str, tuple[pa.DataType, Callable[[Any], Any]]] = {
        "valid_from": (pa.date32(), _date),
        "valid_to": (pa.date32(), _date),
        "version": (pa.int32(), _same),
        "created_at": (pa.timestamp("us", tz=zone), _instant),
        "created_by": (ACTOR_STRUCT, _same),
        "updated_by": (ACTOR_STRUCT, _same),
    }
    columns = [Column(n, *types.get(n, (pa.string(), _same))) for n in MEMBERSHIP_FIELDS]
    columns += [
        Column("subject_id", pa.string(), _same),
        Column("key_id", pa.string(), _same),
        Column("updated_at", pa.timestamp("us", tz=zone), _instant),
    ]
    if include_personnummer:
        columns.append(Column("personnummer", pa.string(), _same))
    return columns


def _subgroups(value: Any) -> Any:
    return [
        {**s, "valid_from": _date(s["valid_from"]), "valid_to": _date(s["valid_to"])} for s in value
    ]


def catalog_columns() -> list[Column]:
    """The catalog table: one row per group, as `customer_group.catalog_group` has it."""
    subgroup = pa.struct(
        [
            ("subgroup_code", pa.string()),
            ("name", pa.string()),
            ("valid_from", pa.date32()),
            ("valid_to", pa.date32()),
        ]
    )
    return [
        Column("group_code", pa.string(), _same),
        Column("name", pa.string(), _same),
        Column("valid_from", pa.date32(), _date),
        Column("valid_to", pa.date32(), _date),
        Column("subgroups", pa.list_(subgroup), _subgroups),
        Column("catalog_version", pa.string(), _same),
    ]


def vaccination_columns(zone: str, *, include_personnummer: bool) -> list[Column]:
    columns = [
        Column("vaccination_id", pa.string(), _same),
        Column("subject_id", pa.string(), _same),
        Column("key_id", pa.string(), _same),
        Column("unit_id", pa.string(), _same),
        Column("administered_at", pa.timestamp("us", tz=zone), _instant),
        Column("vaccine", VACCINE_STRUCT, _same),
        Column("confirmed_at", pa.timestamp("us", tz=zone), _instant),
        Column("basis", pa.string(), _same),
        Column("groups", pa.list_(GROUP_STRUCT), _same),
        Column("missing_group", pa.bool_(), _same),
        Column("status", pa.string(), _same),
        Column("version", pa.int32(), _same),
    ]
    if include_personnummer:
        columns.append(Column("personnummer", pa.string(), _same))
    return columns


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value  # shown as text; the Parquet file keeps the value as it is
    return value


class ParquetCsvFile:
    """`<stem>.parquet` and `<stem>.csv` in `directory`; each `write` is one row group."""

    def __init__(self, directory: Path, stem: str, columns: list[Column]) -> None:
        self.columns = columns
        self.schema = pa.schema([(c.name, c.type) for c in columns])
        directory.mkdir(parents=True, exist_ok=True)
        self.parquet_path = directory / f"{stem}.parquet"
        self.csv_path = directory / f"{stem}.csv"
        self._partials = [_partial(self.parquet_path), _partial(self.csv_path)]
        self._parquet = pq.ParquetWriter(str(_partial(self.parquet_path)), self.schema)
        self._csv_file: IO[str] = _partial(self.csv_path).open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow([c.name for c in columns])
        self._closed = False

    def write(self, records: Sequence[ExportRecord]) -> None:
        self.write_rows([r.data for r in records])

    def write_rows(self, data: Sequence[Mapping[str, Any]]) -> None:
        """Rows as the topics' JSON has them (the catalog's are not export records)."""
        if not data:
            return
        arrays = [
            pa.array([c.to_parquet(d.get(c.name)) for d in data], type=c.type) for c in self.columns
        ]
        self._parquet.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self._csv.writerows([_csv_text(d.get(c.name)) for c in self.columns] for d in data)

    def commit(self) -> None:
        self._close()
        for partial, final in zip(self._partials, (self.parquet_path, self.csv_path), strict=True):
            partial.replace(final)

    def abort(self) -> None:
        self._close()
        for partial in self._partials:
            partial.unlink(missing_ok=True)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._parquet.close()
            self._csv_file.close()


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")
