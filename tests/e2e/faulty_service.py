"""`FAULTY_SERVICE=groups|export python -m tests.e2e.faulty_service`: the real service
process with one bug put in: a batch holding a record with `TRIGGER` in its value
raises where nothing retries it (the groups applier, the export pipeline), as a bug
would."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from services.common.records import SourceRecord

TRIGGER = b"fatal-stop-test-trigger"


def _check(records: Sequence[SourceRecord]) -> None:
    if any(TRIGGER in (record.value or b"") for record in records):
        raise LookupError("a bug put in by the test")


def main(service: str) -> int:
    if service == "groups":
        from services.groups.entrypoints import cli as groups_cli
        from services.groups.service_layer.applier import BatchApplier

        apply = BatchApplier.apply

        async def faulty_apply(self: BatchApplier, batch: Any) -> Any:
            _check([item.record for item in batch.items])
            return await apply(self, batch)

        BatchApplier.apply = faulty_apply  # type: ignore[method-assign]
        return groups_cli.main(["serve"])

    from services.export.entrypoints import cli as export_cli
    from services.export.service_layer.pipeline import ExportPipeline

    process = ExportPipeline.process

    async def faulty_process(
        self: ExportPipeline, records: Sequence[SourceRecord], *args: Any, **kwargs: Any
    ) -> None:
        _check(records)
        await process(self, records, *args, **kwargs)

    ExportPipeline.process = faulty_process  # type: ignore[method-assign]
    return export_cli.main(["serve"])


if __name__ == "__main__":
    sys.exit(main(os.environ["FAULTY_SERVICE"]))
