"""Table definitions of the groups service (SQLAlchemy Core).

The Alembic migrations in `migrations/` create exactly these tables; a test
compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

catalog_groups = Table(
    "catalog_groups",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date),
    Column("position", Integer, nullable=False),
    Column("catalog_version", String(64), nullable=False),
)

catalog_subgroups = Table(
    "catalog_subgroups",
    metadata,
    Column("group_code", String(64), ForeignKey("catalog_groups.code"), primary_key=True),
    Column("code", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date),
    Column("position", Integer, nullable=False),
    Column("rule", JSONB),
)

customers = Table(
    "customers",
    metadata,
    Column("personnummer", String(12), primary_key=True),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

memberships = Table(
    "memberships",
    metadata,
    Column("membership_id", UUID(as_uuid=False), primary_key=True),
    Column("personnummer", String(12), ForeignKey("customers.personnummer"), nullable=False),
    Column("group_code", String(64), nullable=False),
    Column("subgroup_code", String(64)),
    Column("reference_code", String(64)),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date),
    Column("version", Integer, nullable=False),
    # active | historical | entered_in_error (stored: entered in error keeps its period)
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Provenance (migration 0004): who created it and who changed it last; null for what
    # the service did itself, and updated_by null until the first change.
    Column("created_by_user", Text),
    Column("created_by_unit", Text),
    Column("updated_by_user", Text),
    Column("updated_by_unit", Text),
    CheckConstraint(
        "status IN ('active', 'historical', 'entered_in_error')", name="ck_memberships_status"
    ),
    CheckConstraint(
        "status = 'entered_in_error' OR (status = 'active') = (valid_to IS NULL)",
        name="ck_memberships_status_period",
    ),
    Index("ix_memberships_personnummer", "personnummer"),
    # The database backs ALREADY_ACTIVE: one active membership per customer and group.
    Index(
        "ux_memberships_one_active_per_group",
        "personnummer",
        "group_code",
        unique=True,
        postgresql_where=text("status = 'active'"),
    ),
    Index("ix_memberships_updated_at", "updated_at"),
)

bookings = Table(
    "bookings",
    metadata,
    Column("booking_id", String(128), primary_key=True),
    Column("unit_id", String(128), nullable=False),
    Column("personnummer", String(12), ForeignKey("customers.personnummer"), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("vaccine_code", String(64)),
    Column("vaccine_name", Text),
    Column("dose", Integer),
    Column("requested_group_code", String(64)),
    Column("requested_subgroup_code", String(64)),
    Column("status", String(16), nullable=False),  # booked | cancelled
    Column("source_event_time", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_bookings_personnummer", "personnummer"),
)

prompts = Table(
    "prompts",
    metadata,
    Column("prompt_id", UUID(as_uuid=False), primary_key=True),
    Column("vaccination_id", String(128), nullable=False, unique=True),
    Column("personnummer", String(12), ForeignKey("customers.personnummer"), nullable=False),
    Column("unit_id", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("booking_id", String(128)),
    Column("vaccine_code", String(64)),
    # The exact event sent, so a redelivered start re-sends the very same prompt.
    Column("event", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
)

# The dose-level record (migration 0005): one row per vaccination_id, replaced by each
# new version; `memberships` holds the covering memberships as the confirmation event
# showed them, so the export's backfill rebuilds the very record the live path built.
vaccination_confirmations = Table(
    "vaccination_confirmations",
    metadata,
    Column("vaccination_id", String(128), primary_key=True),
    Column("prompt_id", UUID(as_uuid=False), ForeignKey("prompts.prompt_id")),
    Column("personnummer", String(12), nullable=False),
    Column("unit_id", String(128), nullable=False),
    # Who caused this version (popup closed, dose registered); null for a re-confirmation
    # after a membership change.
    Column("actor_user_id", String(128)),
    Column("actor_unit_id", String(128)),
    Column("command_id", String(1024)),
    Column("basis", String(16), nullable=False),  # popup | registration
    Column("status", String(16), nullable=False),  # completed | entered_in_error
    Column("memberships", JSONB, nullable=False),
    Column("missing_group", Boolean, nullable=False),
    Column("confirmed_at", DateTime(timezone=True)),
    Column("administered_at", DateTime(timezone=True)),
    Column("vaccine", JSONB),  # {code, name, dose_number}
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # A membership change re-decides that customer's doses: one index probe per customer.
    Index("ix_vaccination_confirmations_personnummer", "personnummer"),
    Index("ix_vaccination_confirmations_updated_at", "updated_at"),
)

# Idempotency: ids of events already applied, written in the same transaction as
# their effect, so a redelivered record changes nothing.
inbox = Table(
    "inbox",
    metadata,
    Column("topic", String(249), primary_key=True),
    Column("event_id", String(1024), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Pruning by age (migration 0007): the oldest rows first, without a scan of the table.
    Index("ix_inbox_processed_at", "processed_at"),
)

# Transactional outbox: every outgoing record is written with the state change that
# caused it; the relay publishes in id order and deletes what the broker acknowledged.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("topic", String(249), nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary),
    Column("headers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Outbox rows the broker refused for good (too large, invalid): out of the publishing
# order, with their outbox id and content, until an operator retries them (migration 0006).
outbox_parked = Table(
    "outbox_parked",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("topic", String(249), nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary),
    Column("headers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("error", String(64), nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_outbox_parked_parked_at", "parked_at"),
)

# Who leads a role among the service's processes, until when (database time); the leader
# renews while it makes progress, so a frozen one is replaced (`leadership.Lease`).
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("term", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # The holder's database session: when it is gone (a crash), no need to wait for expiry.
    Column("backend_pid", Integer),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("source_topic", String(249), nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary),
    Column("headers", JSONB, nullable=False),
    Column("error_code", String(64), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("replayed_at", DateTime(timezone=True)),
    Index("ix_dead_letters_created_at", "created_at"),
)

# PDL (patientdatalagen) access log: every change and every read of a customer's groups.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("action", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("unit_id", String(128), nullable=False),
    Column("personnummer", String(12)),  # null: the row names no patient
    Column("membership_id", UUID(as_uuid=False)),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("ix_audit_log_personnummer_at", "personnummer", "at"),
)

# The audit log's hash chain (migration 0003), beside it because audit_log is
# insert-only: one link per audit row, appended by the single sealer in `audit_sealer`.
# Both tables refuse UPDATE, DELETE and TRUNCATE by trigger, the owner included.
audit_chain = Table(
    "audit_chain",
    metadata,
    Column("audit_id", BigInteger, ForeignKey("audit_log.id"), primary_key=True),
    Column("position", BigInteger, nullable=False, unique=True),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("sealed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
