"""`customer-groups [command]` (or `python -m services.groups`): run the service (the
default) or an operator task.

Each result is one JSON line on stdout (counts and hints for a person go to stderr);
an error is one line on stderr with a non-zero status (see `services.common.cli`). The
personnummer for `audit-extract` is read from standard input, so it stays out of shell
history and process lists.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from services.common import serving
from services.common.cli import (
    EXIT_USAGE,
    CommandError,
    new_parser,
    positive_int,
    print_result,
    run_command,
)
from services.common.db import create_engine
from services.common.kafka import ensure_topics
from services.common.logs import configure_logging
from services.common.settings import (
    AppSettings,
    DatabaseSettings,
    GroupsSettings,
    KafkaSettings,
    TopicSettings,
    UnsafeSettings,
    inbox_problems,
)
from services.groups.adapters import migrate, outbox_parking
from services.groups.bootstrap import SERVICE_NAME, catalog_path_of, read_catalog_file
from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import DomainError
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import operations
from services.groups.service_layer.context import Clock
from services.groups.service_layer.unit_of_work import UnitOfWork

T = TypeVar("T")
PROG = "customer-groups"


def _with_uow(task: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(DatabaseSettings())
        try:
            if AppSettings().dev_mode:
                await migrate.upgrade(engine)
            elif await migrate.current_revision(engine) != migrate.head_revision():
                raise CommandError("the schema is not at head; run `migrate` first")
            async with UnitOfWork(
                engine, dlq_topic=TopicSettings().dlq, service=SERVICE_NAME
            ) as uow:
                return await task(uow)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def serve() -> int:
    from services.groups.bootstrap import GroupsService
    from services.groups.entrypoints.app import build_app

    service = GroupsService()
    settings = service.settings.groups
    return serving.serve(
        build_app(service), host=settings.http_host, port=settings.http_port, fatal=service.fatal
    )


def migrate_command() -> int:
    """The deployment's privileged step: create the topics, migrate the schema (as
    DATABASE_MIGRATION_URL's role) and grant DATABASE_SERVICE_ROLE what the service needs,
    so the running services need neither CREATE on the broker nor DDL rights."""
    kafka = KafkaSettings()
    # Never create inbound topics whose records would outlive the inbox.
    if problems := inbox_problems(GroupsSettings(), kafka):
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2

    async def run() -> None:
        await ensure_topics(TopicSettings(), kafka)
        settings = DatabaseSettings()
        engine = create_engine(settings.model_copy(update={"database_url": settings.migration_url}))
        try:
            await migrate.upgrade(engine)
            if settings.database_service_role:
                await migrate.grant_service_role(engine, settings.database_service_role)
        finally:
            await engine.dispose()

    asyncio.run(run())
    print_result(
        {
            "command": "migrate",
            "topics": "in place",
            "schema_revision": migrate.head_revision(),
            "service_role_granted": DatabaseSettings().database_service_role,
        }
    )
    return 0


def import_catalog(path: Path) -> int:
    catalog = read_catalog_file(path)
    if catalog.example and not AppSettings().dev_mode:
        raise CommandError(
            f"{path.name} is an example catalog; only APP_ENV=dev or test imports one", EXIT_USAGE
        )
    clock = Clock(GroupsSettings().timezone)
    in_force = _with_uow(
        lambda uow: operations.import_catalog(
            uow,
            catalog,
            today=clock.today(),
            now=clock.now(),
            catalog_topic=TopicSettings().catalog,
        )
    )
    kept = _codes(in_force) - _codes(catalog)
    groups = sum(1 for _, subgroup in kept if subgroup is None)
    print_result(
        {
            "command": "import-catalog",
            "catalog_version": catalog.version,
            "groups": len(catalog.groups),
            # Codes the file no longer lists: kept, ended (never deleted).
            "groups_kept_ended": groups,
            "subgroups_kept_ended": len(kept) - groups,
        }
    )
    print("running services pick the catalog up within a minute", file=sys.stderr)
    return 0


def _codes(catalog: Catalog) -> set[tuple[str, str | None]]:
    return {(g.code, None) for g in catalog.groups} | {
        (g.code, s.code) for g in catalog.groups for s in g.subgroups
    }


def catalog_dry_run(path: Path) -> int:
    """One JSON line per active membership the import would end, then the count; no
    personnummer, and nothing is written."""
    catalog = read_catalog_file(path)
    today = Clock(GroupsSettings().timezone).today()

    async def collect(uow: UnitOfWork) -> int:
        count = 0
        async for ended in operations.catalog_dry_run(uow, catalog, today=today):
            print_result(asdict(ended))
            count += 1
        return count

    count = _with_uow(collect)
    print_result({"catalog_version": catalog.version, "memberships_ended": count})
    return 0


def audit_extract(
    operator: operations.Operator,
    by_user: str | None,
    by_unit: str | None,
    since_at: datetime | None,
) -> int:
    personnummer = None
    if by_user is None and by_unit is None:
        try:
            personnummer = Personnummer.parse(sys.stdin.readline().strip())
        except DomainError as error:
            raise CommandError(str(error), EXIT_USAGE) from None
    rows = _with_uow(
        lambda uow: operations.audit_extract(
            uow,
            operator,
            personnummer=personnummer,
            by_user=by_user,
            by_unit=by_unit,
            since=since_at,
        )
    )
    for row in rows:
        print_result(row)
    print(f"{len(rows)} log entries", file=sys.stderr)
    return 0


def audit_verify(grace_seconds: float) -> int:
    report = _with_uow(
        lambda uow: operations.audit_verify(
            uow, now=datetime.now(UTC), grace=timedelta(seconds=grace_seconds)
        )
    )
    print_result(report.summary())
    if report.broken is not None:
        print(f"audit chain broken: {report.broken.describe()}", file=sys.stderr)
        return 1
    return 0


def list_dead_letters(include_replayed: bool, limit: int) -> int:
    letters = _with_uow(
        lambda uow: operations.list_dead_letters(
            uow, include_replayed=include_replayed, limit=limit
        )
    )
    for letter in letters:
        print_result(asdict(letter))
    print(f"{len(letters)} dead letters", file=sys.stderr)
    return 0


def replay_dead_letters(ids: list[int] | None) -> int:
    try:
        count = _with_uow(
            lambda uow: operations.replay_dead_letters(uow, ids, now=datetime.now(UTC))
        )
    except operations.UnknownIds as error:
        raise CommandError(str(error)) from None
    print_result({"command": "dead-letters replay", "replayed": count})
    print("queued for replay to their source topics", file=sys.stderr)
    return 0


def list_parked_rows(limit: int) -> int:
    """Parked outbox rows, one JSON line each: never their key or value (a personnummer)."""
    rows = _with_uow(lambda uow: outbox_parking.list_parked(uow.connection, limit=limit))
    for row in rows:
        print_result(asdict(row))
    print(f"{len(rows)} parked outbox rows", file=sys.stderr)
    return 0


def retry_parked_rows(ids: list[int] | None) -> int:
    async def retry(uow: UnitOfWork) -> int:
        count = await outbox_parking.retry_parked(uow.connection, ids)
        if ids is not None and count < len(set(ids)):
            # Nothing is committed: an id that is no parked row is a mistake to fix first.
            raise CommandError(
                "not every id is a parked row (see `outbox parked`); nothing was retried"
            )
        await uow.commit()
        return count

    count = _with_uow(retry)
    print_result({"command": "outbox retry", "retried": count})
    print("back in the outbox, to be published in their id order", file=sys.stderr)
    return 0


def _instant(text: str) -> datetime:
    """An ISO date or date-time; UTC unless it names a zone."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(PROG, "The groups service (the default), or an operator task.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the groups service (the default)")
    commands.add_parser("migrate", help="create the topics and migrate the schema")
    catalog = commands.add_parser("import-catalog", help="load a catalog file into the database")
    catalog.add_argument(
        "file",
        type=Path,
        nargs="?",
        help="default: GROUPS_CATALOG_FILE, else the catalog shipped with the service",
    )
    catalog.add_argument(
        "--dry-run",
        action="store_true",
        help="load nothing; list the active memberships the import would end",
    )
    extract = commands.add_parser(
        "audit-extract",
        help="PDL log extract: one patient (personnummer on stdin), or --by-user/--by-unit",
    )
    extract.add_argument("--user", required=True, help="your user id (the extract is logged)")
    extract.add_argument("--unit", required=True, help="your unit id")
    extract.add_argument("--by-user", help="what this user did, with whose records")
    extract.add_argument("--by-unit", help="what was done at this unit")
    extract.add_argument(
        "--since", type=_instant, help="ISO date or date-time (UTC unless it has a zone)"
    )
    verify = commands.add_parser(
        "audit-verify", help="walk the audit log's hash chain; non-zero exit on a break"
    )
    verify.add_argument(
        "--grace-seconds",
        type=float,
        default=300.0,
        help="a row older than this and not sealed is a break",
    )
    letters = commands.add_parser("dead-letters", help="list or replay dead letters")
    letter_commands = letters.add_subparsers(dest="action", required=True)
    listing = letter_commands.add_parser("list")
    listing.add_argument("--all", action="store_true", help="include replayed ones")
    listing.add_argument("--limit", type=positive_int, default=100)
    replay = letter_commands.add_parser("replay")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=positive_int, action="append", dest="ids")
    which.add_argument("--all", action="store_true")
    outbox = commands.add_parser(
        "outbox", help="outbox rows the broker refused for good (parked): list or retry"
    )
    outbox_commands = outbox.add_subparsers(dest="outbox_action", required=True)
    parked = outbox_commands.add_parser("parked", help="list parked rows (no record values)")
    parked.add_argument("--limit", type=positive_int, default=100)
    retry = outbox_commands.add_parser(
        "retry", help="after a fix: parked rows back into the outbox, same id and content"
    )
    retry_which = retry.add_mutually_exclusive_group(required=True)
    retry_which.add_argument("--id", type=positive_int, action="append", dest="ids")
    retry_which.add_argument("--all", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(AppSettings().log_level)
    return run_command(PROG, lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in (None, "serve"):
        try:
            return serve()
        except UnsafeSettings as error:
            print(error, file=sys.stderr)
            return EXIT_USAGE
    if args.command == "migrate":
        return migrate_command()
    if args.command == "import-catalog":
        path = args.file or catalog_path_of(GroupsSettings())
        try:
            return catalog_dry_run(path) if args.dry_run else import_catalog(path)
        except (OSError, ValueError) as error:  # unreadable or invalid: nothing was loaded
            raise CommandError(f"catalog {path}: {error}", EXIT_USAGE) from None
    if args.command == "audit-extract":
        return audit_extract(
            operations.Operator(args.user, args.unit), args.by_user, args.by_unit, args.since
        )
    if args.command == "audit-verify":
        return audit_verify(args.grace_seconds)
    if args.command == "outbox":
        if args.outbox_action == "parked":
            return list_parked_rows(args.limit)
        return retry_parked_rows(None if args.all else args.ids)
    if args.action == "list":
        return list_dead_letters(args.all, args.limit)
    return replay_dead_letters(None if args.all else args.ids)
