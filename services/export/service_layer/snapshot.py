"""Snapshot: the export's records, built from the groups database, written to files
(Parquet and CSV per record type, and a catalog table) instead of the topic.

The records are the backfill's (same `RecordBuilder`), so a snapshot equals the state of
a fully caught-up export topic. All tables are read in one REPEATABLE READ transaction:
the files show one moment. Rows stream in chunks; each chunk becomes one Parquet row
group and is written before the next is read, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.export.adapters.groups_db import SourceTable
from services.export.domain.records import ExportRecord, RecordBuilder
from services.export.service_layer.backfill import (
    ProgressFactory,
    TablesOpener,
    build_record,
    no_progress,
)
from services.groups.service_layer import messages

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 20_000


class RecordFile(Protocol):
    """The output of one record type; nothing is visible under the final names before
    `commit`, and `abort` leaves nothing behind."""

    def write(self, records: Sequence[ExportRecord]) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class RowFile(Protocol):
    """The catalog's output: rows as `customer_group.catalog_group` data."""

    def write_rows(self, data: Sequence[Mapping[str, Any]]) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


CATALOG_TABLE = "catalog_groups"


@dataclass(frozen=True)
class SnapshotReport:
    rows: dict[str, int]
    seconds: float

    def summary(self) -> dict[str, Any]:
        total = sum(self.rows.values())
        return {
            "rows": dict(self.rows),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(total / self.seconds, 1) if self.seconds > 0 else 0.0,
        }


async def snapshot(
    open_consistent_tables: TablesOpener,
    builder: RecordBuilder,
    files: Mapping[SourceTable, RecordFile],
    *,
    catalog_file: RowFile,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFactory = no_progress,
) -> SnapshotReport:
    """Every export record, and the catalog (every group, retired ones included) so the
    codes in the records resolve to names and periods as of the same moment."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    began = time.monotonic()
    rows: dict[str, int] = {}
    outputs: list[RecordFile | RowFile] = [*files.values(), catalog_file]
    try:
        async with open_consistent_tables() as tables:
            for table in SourceTable:
                total = await tables.count(table)
                bar = progress(table.value, total)
                rows[table.value] = 0
                try:
                    chunks = tables.chunks(table, size=batch_size)
                    async with contextlib.aclosing(chunks):
                        async for chunk in chunks:
                            files[table].write([build_record(builder, table, r) for r in chunk])
                            rows[table.value] += len(chunk)
                            bar.update(len(chunk))
                finally:
                    bar.close()
            catalog = await tables.catalog()
            groups = [] if catalog is None else messages.catalog_document(catalog)["groups"]
            catalog_file.write_rows(groups)
            rows[CATALOG_TABLE] = len(groups)
    except BaseException:
        for output in outputs:
            output.abort()
        raise
    for output in outputs:
        output.commit()
    report = SnapshotReport(rows, time.monotonic() - began)
    log.info("snapshot written", extra={f"ctx_{k}": v for k, v in report.summary().items()})
    return report
