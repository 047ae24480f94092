"""Compaction equivalence: the last value per key on the export topic equals the record
the export's own builder makes from the groups database's rows (the backfill's path), and
no personnummer leaves in the default export."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import SecretStr

from services.common.settings import AppSettings, ExportSettings
from services.export.adapters.groups_db import SourceTable, open_tables
from services.export.bootstrap import ExportSettingsBundle, record_builder_from
from services.export.service_layer.pipeline import record_value
from tests.pii import personnummer_forms
from tests.reliability.harness import Stack, read_topic


@dataclass
class ExportComparison:
    keys_expected: int = 0
    records_on_topic: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    personnummer_found: int = 0

    @property
    def equivalent(self) -> bool:
        return not (self.missing or self.unexpected or self.different)

    def assert_equivalent(self) -> None:
        assert self.equivalent, (self.missing[:5], self.unexpected[:5], self.different[:5])

    def summary(
        self, *, inputs: int, faults: int, zero: dict[str, int], lag: Iterable[int]
    ) -> dict[str, int]:
        """The summary figures of a check that runs the export: the reconciliation's
        (`zero`) plus the export's own; `lag`: records left behind per partition."""
        return {
            "inputs": inputs,
            "faults": faults,
            "bad_inputs": 0,
            "lost": zero["lost"] + len(self.missing),
            "duplicated_effects": zero["duplicated_effects"] + len(self.unexpected),
            "stuck_partitions": sum(1 for behind in lag if behind),
            "personnummer_found": self.personnummer_found,
        }


async def expected_export(stack: Stack) -> dict[bytes, bytes]:
    """Key -> value of every record built from the database, as the backfill builds it."""
    settings = ExportSettingsBundle(
        app=AppSettings(app_env="test"),
        export=ExportSettings(pseudonym_key=SecretStr(stack.env["EXPORT_PSEUDONYM_KEY"])),
    )
    builder = record_builder_from(settings)
    expected: dict[bytes, bytes] = {}
    async with open_tables(stack.engine, consistent=True) as tables:
        for table, build in (
            (SourceTable.MEMBERSHIPS, builder.membership_from_row),
            (SourceTable.VACCINATION_CONFIRMATIONS, builder.vaccination_from_row),
        ):
            async for chunk in tables.chunks(table, size=2000):
                for row in chunk:
                    record = build(row)
                    expected[record.key.encode()] = record_value(record)
    return expected


async def compare_export(stack: Stack, personnummer: Iterable[str]) -> ExportComparison:
    expected = await expected_export(stack)
    records = await read_topic(stack.bootstrap, stack.topics.export)
    last: dict[bytes, bytes | None] = {}
    for record in records:
        assert record.key is not None, "every export record has a key"
        last[record.key] = record.value
    result = ExportComparison(keys_expected=len(expected), records_on_topic=len(records))
    result.missing = sorted(k.decode() for k in expected.keys() - last.keys())
    result.unexpected = sorted(k.decode() for k in last.keys() - expected.keys())
    result.different = sorted(
        k.decode() for k in expected.keys() & last.keys() if expected[k] != last[k]
    )
    forms = sorted(personnummer_forms(personnummer))
    for record in records:
        blob = (record.key or b"") + b"\x00" + (record.value or b"")
        result.personnummer_found += sum(1 for form in forms if form in blob)
    return result
