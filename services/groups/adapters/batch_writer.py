"""All SQL of the batch write path: the lock, the read and the write that a batch of
inbound records costs, besides its commit.

A batch used to cost one statement per table it read and per table it wrote, round
trips that each waited for PostgreSQL in turn; that wait, not the CPU, limited both
throughput and prompt latency (BENCHMARKS.md, fix 2). Here a batch reads with one
SELECT of arrays (a table's row type decodes to records) and writes with one statement:
an `INSERT ... SELECT FROM unnest(arrays)` per table, as data-modifying CTEs. Each text
is the same for every batch, whatever its size or mix, so it is prepared once per
connection and its plan is reused.

The columns written and their array types are those of the tables in `orm`; callers
hand rows as mappings keyed by column name. Every array parameter is always bound
(empty when a table has nothing to write).
"""

# The SQL is assembled once, at import, from the tables' constant names; every value
# is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, String, Table, TextClause, text
from sqlalchemy.dialects import registry
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters.orm import (
    audit_log,
    bookings,
    customers,
    dead_letters,
    inbox,
    memberships,
    outbox,
    prompts,
    vaccination_confirmations,
)

# One table's rows for the write, each keyed by column name (other keys are ignored).
Rows = Sequence[Mapping[str, Any]]

_LOCK = text(
    "SELECT pg_advisory_xact_lock(h) FROM ("
    " SELECT DISTINCT hashtextextended(s, 0) AS h"
    " FROM unnest(CAST(:subjects AS text[])) AS s ORDER BY h) AS ordered"
)


async def lock_subjects(connection: AsyncConnection, subjects: Sequence[str]) -> None:
    """Transaction-scoped advisory locks, taken in one fixed order (by hash)."""
    if subjects:
        await connection.execute(_LOCK, {"subjects": list(subjects)})


# What a batch will read: which of its events were applied before (their positions in
# the given arrays), which of its customers exist and their memberships, its bookings,
# prompts, the dose records of its vaccinations and those of the customers whose
# memberships it may change (a change may re-decide their groups). The inbox is probed
# once per event by primary key: LIMIT keeps the planner from making the lookup a hash
# join over the whole inbox, which it chose while the inbox's statistics were stale
# (BENCHMARKS.md, fix 12).
READ = text(
    """
SELECT
  ARRAY(SELECT k.n FROM unnest(CAST(:inbox_topics AS text[]), CAST(:inbox_ids AS text[]))
          WITH ORDINALITY AS k(topic, event_id, n)
        CROSS JOIN LATERAL (SELECT FROM inbox AS i
                            WHERE i.topic = k.topic AND i.event_id = k.event_id
                            LIMIT 1) AS applied) AS processed,
  ARRAY(SELECT c.personnummer FROM customers AS c
        WHERE c.personnummer = ANY(CAST(:personnummer AS text[]))) AS customers,
  ARRAY(SELECT m FROM memberships AS m
        WHERE m.personnummer = ANY(CAST(:personnummer AS text[]))
        ORDER BY m.valid_from, m.created_at) AS memberships,
  ARRAY(SELECT b FROM bookings AS b
        WHERE b.booking_id = ANY(CAST(:booking_ids AS text[]))) AS bookings,
  ARRAY(SELECT p FROM prompts AS p
        WHERE p.vaccination_id = ANY(CAST(:vaccination_ids AS text[]))
           OR p.prompt_id = ANY(CAST(:prompt_ids AS uuid[]))) AS prompts,
  ARRAY(SELECT d FROM vaccination_confirmations AS d
        WHERE d.vaccination_id = ANY(CAST(:dose_vaccination_ids AS text[]))) AS doses,
  ARRAY(SELECT d FROM vaccination_confirmations AS d
        WHERE d.personnummer = ANY(CAST(:dose_customers AS text[]))) AS customer_doses
"""
)


async def read(
    connection: AsyncConnection,
    *,
    events: Sequence[tuple[str, str]],
    personnummer: list[str],
    booking_ids: list[str],
    vaccination_ids: list[str],
    prompt_ids: list[str],
    dose_vaccination_ids: list[str],
    dose_customers: list[str],
) -> Row[Any]:
    """READ's one row; `processed` holds the positions (from 1) in `events` of the
    (topic, event id) pairs the inbox holds."""
    result = await connection.execute(
        READ,
        {
            "inbox_topics": [topic for topic, _ in events],
            "inbox_ids": [event_id for _, event_id in events],
            "personnummer": personnummer,
            "booking_ids": booking_ids,
            "vaccination_ids": vaccination_ids,
            "prompt_ids": prompt_ids,
            "dose_vaccination_ids": dose_vaccination_ids,
            "dose_customers": dose_customers,
        },
    )
    return result.one()


_DIALECT = registry.load("postgresql.asyncpg")()


def _array_type(table: Table, name: str) -> str:
    column_type = table.c[name].type
    # text, not varchar(n): that cast would cut a long value silently, the column refuses it.
    if isinstance(column_type, String):
        return "text[]"
    return f"{column_type.compile(dialect=_DIALECT).lower()}[]"


@dataclass(frozen=True, eq=False)
class Columns:
    """One table's part of WRITE: the columns it writes, in the table's order, each bound
    as one array parameter named `<prefix>_<column>`."""

    table: Table
    names: tuple[str, ...]
    binds: tuple[str, ...]

    @classmethod
    def of(
        cls,
        table: Table,
        prefix: str,
        *,
        only: Iterable[str] | None = None,
        omit: Iterable[str] = (),
    ) -> Columns:
        every = table.c.keys()
        chosen = set(every if only is None else only) - set(omit)
        unknown = chosen.union(omit).difference(every)
        if unknown:
            raise ValueError(f"{table.name} has no column {sorted(unknown)}")
        names = tuple(name for name in every if name in chosen)
        return cls(table, names, tuple(f"{prefix}_{name}" for name in names))

    @property
    def key(self) -> str:
        """The table's primary key, one column."""
        (column,) = self.table.primary_key.columns
        return column.name

    def arrays(self, rows: Rows) -> dict[str, list[Any]]:
        return {
            bind: [row[name] for row in rows]
            for bind, name in zip(self.binds, self.names, strict=True)
        }

    def unnest(self) -> str:
        arrays = ", ".join(
            f"CAST(:{bind} AS {_array_type(self.table, name)})"
            for bind, name in zip(self.binds, self.names, strict=True)
        )
        return f"unnest({arrays})"


# Columns the database fills in (identity, `now()` defaults) are not written.
CUSTOMERS = Columns.of(customers, "c", omit=("created_at",))
BOOKINGS = Columns.of(bookings, "b")
NEW_MEMBERSHIPS = Columns.of(memberships, "m")
# A change never moves a membership to another customer, nor changes its start or how it
# was created (a correction may change its group).
CHANGED_MEMBERSHIPS = Columns.of(
    memberships,
    "mu",
    omit=(
        "personnummer",
        "valid_from",
        "created_at",
        "created_by_user",
        "created_by_unit",
    ),
)
NEW_PROMPTS = Columns.of(prompts, "p")
CLOSED_PROMPTS = Columns.of(prompts, "pc", only=("prompt_id", "closed_at"))
CONFIRMATIONS = Columns.of(vaccination_confirmations, "vc")
AUDIT = Columns.of(audit_log, "a", omit=("id", "at"))
INBOX = Columns.of(inbox, "i", omit=("processed_at",))
DEAD_LETTERS = Columns.of(dead_letters, "d", omit=("id", "created_at", "replayed_at"))
# `created_at` is the inbound batch's receipt, or now() for rows no batch causes.
OUTBOX = Columns.of(outbox, "o", omit=("id",))

ALL: tuple[Columns, ...] = (
    CUSTOMERS,
    BOOKINGS,
    NEW_MEMBERSHIPS,
    CHANGED_MEMBERSHIPS,
    NEW_PROMPTS,
    CLOSED_PROMPTS,
    CONFIRMATIONS,
    AUDIT,
    INBOX,
    DEAD_LETTERS,
    OUTBOX,
)


def _insert(columns: Columns, tail: str = "") -> str:
    names = ", ".join(columns.names)
    return f"INSERT INTO {columns.table.name} ({names}) SELECT * FROM {columns.unnest()}{tail}"


def _others(columns: Columns, source: str) -> str:
    """`column = <source>.column` for every column but the key."""
    return ", ".join(f"{n} = {source}.{n}" for n in columns.names if n != columns.key)


def _replace(columns: Columns) -> str:
    """Inserts each row, or replaces the stored row with the same key."""
    return _insert(
        columns, f" ON CONFLICT ({columns.key}) DO UPDATE SET {_others(columns, 'EXCLUDED')}"
    )


def _update(columns: Columns) -> str:
    """Sets each row's other columns from the arrays, matched by the table's key."""
    return (
        f"UPDATE {columns.table.name} AS t SET {_others(columns, 'k')}"
        f" FROM {columns.unnest()} AS k({', '.join(columns.names)})"
        f" WHERE t.{columns.key} = k.{columns.key}"
    )


_UPDATE_MEMBERSHIPS = _update(CHANGED_MEMBERSHIPS)

# Changed memberships go first on their own when one of them frees a customer's active
# place in a group (ended, entered in error, or corrected into another group) that another
# row of this batch takes: the new active row must not meet the old one in the
# one-active-row-per-group index, and CTEs of one statement run in no set order. Those
# no longer active are updated first, then the rest, so a correction into a group ended
# in the same batch also finds the place free. (A chain of corrections between active
# groups may still meet in the index; the applier then replays the batch one record at a
# time, which is correct, only slower.)
UPDATE_MEMBERSHIPS: TextClause = text(_UPDATE_MEMBERSHIPS)


# The channel a transaction that wrote outbox rows notifies (see `outbox_relay`).
OUTBOX_CHANNEL = "groups_outbox"


def _write(*, with_membership_updates: bool) -> TextClause:
    outbox_names = ", ".join(OUTBOX.names)
    outbox_values = ", ".join(
        "coalesce(created_at, now())" if name == "created_at" else name for name in OUTBOX.names
    )
    parts = [
        _insert(
            CUSTOMERS,
            " ON CONFLICT (personnummer) DO UPDATE SET"
            " first_name = coalesce(EXCLUDED.first_name, customers.first_name),"
            " last_name = coalesce(EXCLUDED.last_name, customers.last_name),"
            " updated_at = EXCLUDED.updated_at",
        ),
        # The repository refused older events, against the row it read under the booking's lock.
        _replace(BOOKINGS),
        _insert(NEW_MEMBERSHIPS),
        _insert(NEW_PROMPTS),
        _update(CLOSED_PROMPTS),
        _replace(CONFIRMATIONS),
        _insert(AUDIT),
        _insert(INBOX, " ON CONFLICT DO NOTHING"),
        _insert(DEAD_LETTERS),
        # Outbox ids, and so the relay's publishing order, follow the arrays' order.
        f"INSERT INTO outbox ({outbox_names}) SELECT {outbox_values} FROM {OUTBOX.unnest()}"
        f" WITH ORDINALITY AS k({outbox_names}, n) ORDER BY n RETURNING 1",
    ]
    outbox_part = len(parts) - 1
    if with_membership_updates:
        parts.append(_UPDATE_MEMBERSHIPS)
    ctes = ",\n".join(f"w{index} AS ({part})" for index, part in enumerate(parts))
    # New outbox rows wake the relay's leader, in whichever process it runs, the moment
    # the transaction commits (PostgreSQL delivers a NOTIFY at commit, once per channel).
    return text(
        f"WITH {ctes}\nSELECT pg_notify('{OUTBOX_CHANNEL}', '')"
        f" FROM (SELECT 1 FROM w{outbox_part} LIMIT 1) AS written"
    )


# Two texts, each prepared once: with the membership updates as one more CTE, and
# without (when they had to run first, see UPDATE_MEMBERSHIPS).
WRITE = _write(with_membership_updates=True)
WRITE_WITHOUT_MEMBERSHIP_UPDATES = _write(with_membership_updates=False)
_WITHOUT_MEMBERSHIP_UPDATES = tuple(part for part in ALL if part is not CHANGED_MEMBERSHIPS)


async def write(
    connection: AsyncConnection, rows: Mapping[Columns, Rows], *, memberships_first: bool
) -> None:
    """Write every row in one statement (two when `memberships_first`, see
    UPDATE_MEMBERSHIPS); a part missing from `rows` writes nothing."""
    if not any(rows.values()):
        return
    statement, parts = WRITE, ALL
    if memberships_first:
        changed = rows.get(CHANGED_MEMBERSHIPS, ())
        for active in (False, True):
            subset = [row for row in changed if (row["status"] == "active") is active]
            if subset:
                await connection.execute(UPDATE_MEMBERSHIPS, CHANGED_MEMBERSHIPS.arrays(subset))
        statement, parts = WRITE_WITHOUT_MEMBERSHIP_UPDATES, _WITHOUT_MEMBERSHIP_UPDATES
    arrays: dict[str, list[Any]] = {}
    for part in parts:
        arrays.update(part.arrays(rows.get(part, ())))
    await connection.execute(statement, arrays)
