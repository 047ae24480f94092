"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The downgrade keeps audit_log, so an upgrade after it finds the table in place.
    if not sa.inspect(op.get_bind()).has_table("audit_log"):
        _create_audit_log()
    _create_the_rest()


def _create_audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("personnummer", sa.String(length=12), nullable=False),
        sa.Column("membership_id", sa.UUID(as_uuid=False), nullable=True),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_audit_log_personnummer_at", "audit_log", ["personnummer", "at"], unique=False
    )


def _create_the_rest() -> None:
    op.create_table(
        "catalog_groups",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("catalog_version", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "customers",
        sa.Column("personnummer", sa.String(length=12), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("personnummer"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("source_topic", sa.String(length=249), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "inbox",
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("event_id", sa.String(length=1024), nullable=False),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("topic", "event_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "bookings",
        sa.Column("booking_id", sa.String(length=128), nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("personnummer", sa.String(length=12), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vaccine_code", sa.String(length=64), nullable=True),
        sa.Column("vaccine_name", sa.Text(), nullable=True),
        sa.Column("dose", sa.Integer(), nullable=True),
        sa.Column("requested_group_code", sa.String(length=64), nullable=True),
        sa.Column("requested_subgroup_code", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["personnummer"],
            ["customers.personnummer"],
        ),
        sa.PrimaryKeyConstraint("booking_id"),
    )
    op.create_index("ix_bookings_personnummer", "bookings", ["personnummer"], unique=False)
    op.create_table(
        "catalog_subgroups",
        sa.Column("group_code", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("rule", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_code"],
            ["catalog_groups.code"],
        ),
        sa.PrimaryKeyConstraint("group_code", "code"),
    )
    op.create_table(
        "memberships",
        sa.Column("membership_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("personnummer", sa.String(length=12), nullable=False),
        sa.Column("group_code", sa.String(length=64), nullable=False),
        sa.Column("subgroup_code", sa.String(length=64), nullable=True),
        sa.Column("reference_code", sa.String(length=64), nullable=True),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_user", sa.Text(), nullable=False),
        sa.Column("updated_by_unit", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["personnummer"],
            ["customers.personnummer"],
        ),
        sa.PrimaryKeyConstraint("membership_id"),
    )
    op.create_index("ix_memberships_personnummer", "memberships", ["personnummer"], unique=False)
    op.create_index("ix_memberships_updated_at", "memberships", ["updated_at"], unique=False)
    op.create_index(
        "ux_memberships_one_active_per_group",
        "memberships",
        ["personnummer", "group_code"],
        unique=True,
        postgresql_where=sa.text("valid_to IS NULL"),
    )
    op.create_table(
        "prompts",
        sa.Column("prompt_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("vaccination_id", sa.String(length=128), nullable=False),
        sa.Column("personnummer", sa.String(length=12), nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("booking_id", sa.String(length=128), nullable=True),
        sa.Column("vaccine_code", sa.String(length=64), nullable=True),
        sa.Column("event", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["personnummer"],
            ["customers.personnummer"],
        ),
        sa.PrimaryKeyConstraint("prompt_id"),
        sa.UniqueConstraint("vaccination_id"),
    )
    op.create_table(
        "vaccination_confirmations",
        sa.Column("vaccination_id", sa.String(length=128), nullable=False),
        sa.Column("prompt_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("personnummer", sa.String(length=12), nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("command_id", sa.String(length=256), nullable=False),
        sa.Column("memberships", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            ["prompts.prompt_id"],
        ),
        sa.PrimaryKeyConstraint("vaccination_id"),
    )
    op.create_index(
        "ix_vaccination_confirmations_confirmed_at",
        "vaccination_confirmations",
        ["confirmed_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_vaccination_confirmations_confirmed_at", table_name="vaccination_confirmations"
    )
    op.drop_table("vaccination_confirmations")
    op.drop_table("prompts")
    op.drop_index(
        "ux_memberships_one_active_per_group",
        table_name="memberships",
        postgresql_where=sa.text("valid_to IS NULL"),
    )
    op.drop_index("ix_memberships_updated_at", table_name="memberships")
    op.drop_index("ix_memberships_personnummer", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("catalog_subgroups")
    op.drop_index("ix_bookings_personnummer", table_name="bookings")
    op.drop_table("bookings")
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_table("dead_letters")
    op.drop_table("customers")
    op.drop_table("catalog_groups")
    # audit_log is never dropped: PDL requires the access log to be kept whatever
    # happens to the code or the schema around it.
