"""parked outbox rows (refused by the broker for good) and leases for leadership

Revision ID: 0006_outbox_parking
Revises: 0005_dose_registrations
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_outbox_parking"
down_revision = "0005_dose_registrations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A row keeps its outbox id (its place in the publishing order) and its content, so a
    # retry puts back exactly what was refused.
    op.create_table(
        "outbox_parked",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.String(length=64), nullable=False),
        sa.Column(
            "parked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("backend_pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    # Parked rows are outgoing records not yet published: back into the outbox, not lost.
    op.execute(
        "INSERT INTO outbox (id, topic, key, value, headers, created_at) OVERRIDING SYSTEM VALUE"
        " SELECT id, topic, key, value, headers, created_at FROM outbox_parked"
    )
    op.drop_table("leases")
    op.drop_table("outbox_parked")
