"""`customer-groups-export [serve | backfill | snapshot]` (or `python -m services.export`);
settings from the environment.

    customer-groups-export                      # the service (default; same as `serve`)
    customer-groups-export backfill [--checkpoint FILE] [--batch-size N] [--limit N]
    customer-groups-export snapshot --out DIR [--batch-size N]

backfill and snapshot read the groups database (DATABASE_URL) and build records with the
service's own settings (EXPORT_PSEUDONYM_KEY, EXPORT_INCLUDE_PERSONNUMMER, GROUPS_TIMEZONE),
so they must run with the same values as the service. Each prints a one-line JSON summary
on stdout; logs and the progress bar go to stderr; an error is one line on stderr with a
non-zero status (`services.common.cli`). pyarrow and tqdm are imported only by
the commands that use them: the service does not need them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import serving
from services.common.cli import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    new_parser,
    positive_int,
    print_result,
    run_command,
)
from services.common.db import create_engine
from services.common.kafka import ensure_topics, start_producer
from services.common.logs import configure_logging
from services.common.settings import AppSettings, UnsafeSettings
from services.export.adapters.checkpoint import FileCheckpointStore, MemoryCheckpointStore
from services.export.adapters.export_topic import ExportPublisher
from services.export.adapters.groups_db import GroupsTables, SourceTable, open_tables
from services.export.bootstrap import ExportSettingsBundle, record_builder_from
from services.export.service_layer import backfill as backfill_service
from services.export.service_layer import snapshot as snapshot_service
from services.export.service_layer.backfill import CheckpointStore, Progress, ProgressFactory

log = logging.getLogger("services.export.cli")
T = TypeVar("T")
PROG = "customer-groups-export"


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        PROG, "The export service (default), or a backfill / snapshot from the groups database."
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,backfill,snapshot}")
    commands.add_parser("serve", help="run the export service (the default)")

    back = commands.add_parser(
        "backfill",
        help="republish every membership and vaccination confirmation to the export topic",
    )
    back.add_argument(
        "--checkpoint",
        type=Path,
        help="file recording progress; a rerun with the same file resumes after the last "
        "acknowledged chunk (without it an interrupted run starts over)",
    )
    back.add_argument(
        "--batch-size",
        type=positive_int,
        default=backfill_service.DEFAULT_BATCH_SIZE,
        help="rows per chunk; the checkpoint moves after each acknowledged chunk",
    )
    back.add_argument(
        "--limit", type=positive_int, help="stop after this many rows (resume with --checkpoint)"
    )
    back.add_argument(
        "--catch-up-margin",
        type=float,
        default=backfill_service.DEFAULT_CATCH_UP_MARGIN.total_seconds(),
        metavar="SECONDS",
        help="the catch-up pass re-reads rows changed since start minus this (clock skew)",
    )
    back.add_argument("--no-progress", action="store_true", help="no progress bar")

    snap = commands.add_parser(
        "snapshot", help="write the export's records and the catalog to Parquet and CSV files"
    )
    snap.add_argument("--out", type=Path, required=True, help="directory for the files")
    snap.add_argument(
        "--batch-size",
        type=positive_int,
        default=snapshot_service.DEFAULT_BATCH_SIZE,
        help="rows per chunk (one Parquet row group each)",
    )
    snap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(AppSettings().log_level)
    return run_command(PROG, lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    settings = ExportSettingsBundle()
    try:
        if args.command in (None, "serve"):
            return serve(settings)
        if args.command == "backfill":
            summary = _run(run_backfill(settings, args))
        else:
            summary = _run(run_snapshot(settings, args))
    except UnsafeSettings as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    if summary is None:
        return EXIT_INTERRUPTED
    summary["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    print_result(summary)
    return 0


def serve(settings: ExportSettingsBundle) -> int:
    from services.export.bootstrap import ExportService
    from services.export.entrypoints.app import build_app

    service = ExportService(settings)
    return serving.serve(
        build_app(service),
        host=settings.export.http_host,
        port=settings.export.http_port,
        fatal=service.fatal,
    )


def _run(work: Coroutine[Any, Any, T]) -> T | None:
    """Run to the end; SIGTERM or Ctrl+C cancel it cleanly (None), the checkpoint keeps
    what was acknowledged."""

    async def cancellable() -> T | None:
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            log.warning("interrupted; what was acknowledged is in the checkpoint")
            return None

    return asyncio.run(cancellable())


@contextlib.asynccontextmanager
async def _engine(settings: ExportSettingsBundle) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database)
    try:
        yield engine
    finally:
        await engine.dispose()


def _progress(enabled: bool) -> ProgressFactory:
    if not enabled:
        return backfill_service.no_progress
    from tqdm import tqdm

    def factory(description: str, total: int) -> Progress:
        bar: Progress = tqdm(
            total=total,
            desc=description,
            unit="rows",
            unit_scale=True,
            file=sys.stderr,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        return bar

    return factory


async def run_backfill(settings: ExportSettingsBundle, args: argparse.Namespace) -> dict[str, Any]:
    builder = record_builder_from(settings)
    store: CheckpointStore = (
        FileCheckpointStore(args.checkpoint) if args.checkpoint else MemoryCheckpointStore()
    )
    topic = settings.topics.export
    # A fresh topic name is created compacted; an existing one needs no CREATE.
    await ensure_topics(settings.topics, settings.kafka, needed=(topic,))
    async with _engine(settings) as engine:

        def tables() -> contextlib.AbstractAsyncContextManager[GroupsTables]:
            return open_tables(engine, consistent=False)

        producer = await start_producer(settings.kafka, client_id="export-backfill")
        try:
            report = await backfill_service.backfill(
                tables,
                ExportPublisher(producer, topic),
                builder,
                store,
                topic=topic,
                batch_size=args.batch_size,
                limit=args.limit,
                catch_up_margin=timedelta(seconds=args.catch_up_margin),
                progress=_progress(not args.no_progress),
            )
        finally:
            await producer.stop()
    return {"command": "backfill", "topic": topic, **report.summary()}


async def run_snapshot(settings: ExportSettingsBundle, args: argparse.Namespace) -> dict[str, Any]:
    from services.export.adapters import record_files

    builder = record_builder_from(settings)
    include = settings.export.include_personnummer
    out: Path = args.out
    files = {
        SourceTable.MEMBERSHIPS: record_files.ParquetCsvFile(
            out,
            "membership_records",
            record_files.membership_columns(settings.timezone, include_personnummer=include),
        ),
        SourceTable.VACCINATION_CONFIRMATIONS: record_files.ParquetCsvFile(
            out,
            "vaccination_records",
            record_files.vaccination_columns(settings.timezone, include_personnummer=include),
        ),
    }
    async with _engine(settings) as engine:

        def tables() -> contextlib.AbstractAsyncContextManager[GroupsTables]:
            return open_tables(engine, consistent=True)

        report = await snapshot_service.snapshot(
            tables,
            builder,
            files,
            catalog_file=record_files.ParquetCsvFile(
                out, snapshot_service.CATALOG_TABLE, record_files.catalog_columns()
            ),
            batch_size=args.batch_size,
            progress=_progress(not args.no_progress),
        )
    return {"command": "snapshot", "out": str(out), **report.summary()}


def _peak_rss_mib() -> float:
    """This process's own peak: VmHWM starts again at exec, whereas ru_maxrss keeps the
    high-water mark of the process that forked us."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
