"""the dose-level record: registrations, basis, status, vaccine, re-confirmations

Revision ID: 0005_dose_registrations
Revises: 0004_membership_provenance
Create Date: 2026-11-30

`vaccination_confirmations` becomes the record of every dose, popup or not: a dose
registered without a popup has no prompt, and a re-confirmation after a membership
change has no command and no actor. Existing rows are popup confirmations.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_dose_registrations"
down_revision = "0004_membership_provenance"
branch_labels = None
depends_on = None

TABLE = "vaccination_confirmations"


def upgrade() -> None:
    op.alter_column(TABLE, "prompt_id", existing_type=sa.UUID(as_uuid=False), nullable=True)
    op.alter_column(
        TABLE,
        "user_id",
        new_column_name="actor_user_id",
        existing_type=sa.String(128),
        nullable=True,
    )
    op.add_column(TABLE, sa.Column("actor_unit_id", sa.String(128), nullable=True))
    # A popup is closed only by its own unit, so the closer's unit is the dose's.
    op.execute(f"UPDATE {TABLE} SET actor_unit_id = unit_id")  # noqa: S608
    op.alter_column(
        TABLE,
        "command_id",
        existing_type=sa.String(256),
        type_=sa.String(1024),
        nullable=True,
    )
    op.alter_column(TABLE, "confirmed_at", existing_type=sa.DateTime(timezone=True), nullable=True)
    for name, column_type, default in (
        ("basis", sa.String(16), "'popup'"),
        ("status", sa.String(16), "'completed'"),
        ("missing_group", sa.Boolean(), "jsonb_array_length(memberships) = 0"),
        ("updated_at", sa.DateTime(timezone=True), "confirmed_at"),
    ):
        op.add_column(TABLE, sa.Column(name, column_type, nullable=True))
        op.execute(f"UPDATE {TABLE} SET {name} = {default}")  # noqa: S608
        op.alter_column(TABLE, name, existing_type=column_type, nullable=False)
    op.add_column(TABLE, sa.Column("administered_at", sa.DateTime(timezone=True)))
    op.add_column(TABLE, sa.Column("vaccine", postgresql.JSONB(astext_type=sa.Text())))
    op.drop_index("ix_vaccination_confirmations_confirmed_at", table_name=TABLE)
    op.create_index("ix_vaccination_confirmations_updated_at", TABLE, ["updated_at"])
    op.create_index("ix_vaccination_confirmations_personnummer", TABLE, ["personnummer"])


def downgrade() -> None:
    # Doses without a popup cannot be kept in the old shape: they are removed.
    op.execute(f"DELETE FROM {TABLE} WHERE prompt_id IS NULL OR confirmed_at IS NULL")  # noqa: S608
    op.drop_index("ix_vaccination_confirmations_personnummer", table_name=TABLE)
    op.drop_index("ix_vaccination_confirmations_updated_at", table_name=TABLE)
    op.create_index("ix_vaccination_confirmations_confirmed_at", TABLE, ["confirmed_at"])
    for name in ("vaccine", "administered_at", "updated_at", "missing_group", "status", "basis"):
        op.drop_column(TABLE, name)
    op.alter_column(TABLE, "confirmed_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.execute(f"UPDATE {TABLE} SET command_id = left(coalesce(command_id, ''), 256)")  # noqa: S608
    op.alter_column(
        TABLE, "command_id", existing_type=sa.String(1024), type_=sa.String(256), nullable=False
    )
    op.drop_column(TABLE, "actor_unit_id")
    op.execute(f"UPDATE {TABLE} SET actor_user_id = '' WHERE actor_user_id IS NULL")  # noqa: S608
    op.alter_column(
        TABLE,
        "actor_user_id",
        new_column_name="user_id",
        existing_type=sa.String(128),
        nullable=False,
    )
    op.alter_column(TABLE, "prompt_id", existing_type=sa.UUID(as_uuid=False), nullable=False)
