"""The statements a batch of inbound records costs, besides its lock and its commit.

A batch used to cost one statement per table it read and per table it wrote, about 15
round trips that each waited for PostgreSQL in turn; that wait, not the CPU, limited
both throughput and prompt latency. Here a batch reads with one SELECT of arrays (a
table's row type decodes to records) and writes with one statement: an
`INSERT ... SELECT FROM unnest(arrays)` per table, as data-modifying CTEs. Each text is
the same for every batch, whatever its size or mix, so it is prepared once per
connection and its plan is reused.

Every array parameter is always bound (empty when a table has nothing to write).
"""

# The SQL is assembled once, at import, from the constant table and column names below;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import TextClause, text

# What a batch will read: which of its events were applied before (their positions in
# the given arrays), which of its customers exist and their memberships, its bookings,
# prompts and confirmation versions. The inbox is probed once per event by primary key:
# LIMIT keeps the planner from making the lookup a hash join over the whole inbox, which
# it chose while the inbox's statistics were stale (25 of a batch's 34 ms at 44 000
# applied events, and growing with every event applied).
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
  ARRAY(SELECT c.vaccination_id FROM vaccination_confirmations AS c
        WHERE c.vaccination_id = ANY(CAST(:vaccination_ids AS text[]))
        ORDER BY c.vaccination_id) AS confirmed_ids,
  ARRAY(SELECT c.version FROM vaccination_confirmations AS c
        WHERE c.vaccination_id = ANY(CAST(:vaccination_ids AS text[]))
        ORDER BY c.vaccination_id) AS confirmed_versions
"""
)


@dataclass(frozen=True)
class Columns:
    """One table's part of WRITE: bind-parameter names, in the table's column order."""

    prefix: str
    names: tuple[str, ...]

    def binds(self) -> list[str]:
        return [f"{self.prefix}_{name}" for name in self.names]


CUSTOMERS = Columns("c", ("personnummer", "first_name", "last_name", "updated_at"))
BOOKINGS = Columns(
    "b",
    (
        "booking_id",
        "unit_id",
        "personnummer",
        "start_time",
        "vaccine_code",
        "vaccine_name",
        "dose",
        "requested_group_code",
        "requested_subgroup_code",
        "status",
        "source_event_time",
        "updated_at",
    ),
)
NEW_MEMBERSHIPS = Columns(
    "m",
    (
        "membership_id",
        "personnummer",
        "group_code",
        "subgroup_code",
        "reference_code",
        "valid_from",
        "valid_to",
        "version",
        "created_at",
        "updated_at",
        "updated_by_user",
        "updated_by_unit",
    ),
)
CHANGED_MEMBERSHIPS = Columns(
    "mu",
    (
        "membership_id",
        "subgroup_code",
        "reference_code",
        "valid_to",
        "version",
        "updated_at",
        "updated_by_user",
        "updated_by_unit",
    ),
)
NEW_PROMPTS = Columns(
    "p",
    (
        "prompt_id",
        "vaccination_id",
        "personnummer",
        "unit_id",
        "user_id",
        "booking_id",
        "vaccine_code",
        "event",
        "created_at",
        "closed_at",
    ),
)
CLOSED_PROMPTS = Columns("pc", ("prompt_id", "closed_at"))
CONFIRMATIONS = Columns(
    "vc",
    (
        "vaccination_id",
        "prompt_id",
        "personnummer",
        "unit_id",
        "user_id",
        "command_id",
        "memberships",
        "confirmed_at",
        "version",
    ),
)
AUDIT = Columns("a", ("action", "user_id", "unit_id", "personnummer", "membership_id", "detail"))
INBOX = Columns("i", ("topic", "event_id"))
DEAD_LETTERS = Columns(
    "d",
    (
        "source_topic",
        "source_partition",
        "source_offset",
        "key",
        "value",
        "headers",
        "error_code",
        "error_message",
    ),
)
OUTBOX = Columns("o", ("topic", "key", "value", "headers"))

ALL = (
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

_TYPES = {
    "personnummer": "text",
    "updated_at": "timestamptz",
    "start_time": "timestamptz",
    "source_event_time": "timestamptz",
    "created_at": "timestamptz",
    "closed_at": "timestamptz",
    "confirmed_at": "timestamptz",
    "dose": "int",
    "version": "int",
    "source_partition": "int",
    "source_offset": "bigint",
    "membership_id": "uuid",
    "prompt_id": "uuid",
    "valid_from": "date",
    "valid_to": "date",
    "event": "bytea",
    "key": "bytea",
    "value": "bytea",
    "headers": "jsonb",
    "detail": "jsonb",
    "memberships": "jsonb",
}


def _unnest(columns: Columns) -> str:
    arrays = ", ".join(
        f"CAST(:{bind} AS {_TYPES.get(name, 'text')}[])"
        for bind, name in zip(columns.binds(), columns.names, strict=True)
    )
    return f"unnest({arrays})"


def _insert(table: str, columns: Columns, tail: str = "") -> str:
    names = ", ".join(columns.names)
    return f"INSERT INTO {table} ({names}) SELECT * FROM {_unnest(columns)}{tail}"


def _update(table: str, columns: Columns, key: str) -> str:
    """Sets each row's other columns from the arrays, matched by `key`."""
    values = ", ".join(f"{n} = k.{n}" for n in columns.names if n != key)
    return (
        f"UPDATE {table} AS t SET {values}"
        f" FROM {_unnest(columns)} AS k({', '.join(columns.names)})"
        f" WHERE t.{key} = k.{key}"
    )


def _excluded(names: tuple[str, ...], key: str) -> str:
    return ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n != key)


_UPDATE_MEMBERSHIPS = _update("memberships", CHANGED_MEMBERSHIPS, "membership_id")

# Changed memberships go first on their own when a group ended in this batch is started
# again for the same customer: the new active row must not meet the old one in the
# one-active-row-per-group index, and CTEs of one statement run in no set order.
UPDATE_MEMBERSHIPS: TextClause = text(_UPDATE_MEMBERSHIPS)


def _write(*, with_membership_updates: bool) -> TextClause:
    parts = [
        _insert(
            "customers",
            CUSTOMERS,
            " ON CONFLICT (personnummer) DO UPDATE SET"
            " first_name = coalesce(EXCLUDED.first_name, customers.first_name),"
            " last_name = coalesce(EXCLUDED.last_name, customers.last_name),"
            " updated_at = EXCLUDED.updated_at",
        ),
        # An older booking event never overwrites a newer one.
        _insert(
            "bookings",
            BOOKINGS,
            f" ON CONFLICT (booking_id) DO UPDATE SET {_excluded(BOOKINGS.names, 'booking_id')}"
            " WHERE bookings.source_event_time IS NULL OR EXCLUDED.source_event_time IS NULL"
            " OR bookings.source_event_time <= EXCLUDED.source_event_time",
        ),
        _insert("memberships", NEW_MEMBERSHIPS),
        _insert("prompts", NEW_PROMPTS),
        _update("prompts", CLOSED_PROMPTS, "prompt_id"),
        _insert(
            "vaccination_confirmations",
            CONFIRMATIONS,
            " ON CONFLICT (vaccination_id) DO UPDATE SET "
            + _excluded(CONFIRMATIONS.names, "vaccination_id"),
        ),
        _insert("audit_log", AUDIT),
        _insert("inbox", INBOX, " ON CONFLICT DO NOTHING"),
        _insert("dead_letters", DEAD_LETTERS),
        # Outbox ids, and so the relay's publishing order, follow the arrays' order.
        f"INSERT INTO outbox ({', '.join(OUTBOX.names)})"
        f" SELECT {', '.join(OUTBOX.names)} FROM {_unnest(OUTBOX)}"
        f" WITH ORDINALITY AS k({', '.join(OUTBOX.names)}, n) ORDER BY n",
    ]
    if with_membership_updates:
        parts.append(_UPDATE_MEMBERSHIPS)
    ctes = ",\n".join(f"w{index} AS ({part})" for index, part in enumerate(parts))
    return text(f"WITH {ctes}\nSELECT 1")


# Two texts, each prepared once: with the membership updates as one more CTE, and
# without (when they had to run first, see UPDATE_MEMBERSHIPS).
WRITE = _write(with_membership_updates=True)
WRITE_WITHOUT_MEMBERSHIP_UPDATES = _write(with_membership_updates=False)
