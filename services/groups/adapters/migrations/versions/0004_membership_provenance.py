"""memberships: stored status (entered_in_error), provenance (created_by, updated_by)

Revision ID: 0004_membership_provenance
Revises: 0003
Create Date: 2026-11-30

- `status` is stored: `entered_in_error` keeps the period, so it cannot be derived from
  `valid_to` any more. Existing rows: `active` where `valid_to` is null, else `historical`.
  The one-active-membership-per-group index follows the status.
- `created_by_user` / `created_by_unit`: who added the membership, from the audit log's
  `customer_group.add` row of that membership (every accepted add wrote one); a row
  without one that was never changed (version 1) takes its `updated_by_*`, which its
  creator set; otherwise null (unknown).
- `updated_by_user` / `updated_by_unit` become nullable: null until the first change, so
  rows never changed (version 1) lose the creator's copy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_membership_provenance"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEX = "ux_memberships_one_active_per_group"


def _one_active_per_group(active: str) -> None:
    """The index behind ALREADY_ACTIVE, over the rows `active` holds for."""
    op.drop_index(_INDEX, table_name="memberships")
    op.create_index(
        _INDEX,
        "memberships",
        ["personnummer", "group_code"],
        unique=True,
        postgresql_where=sa.text(active),
    )


def upgrade() -> None:
    op.add_column("memberships", sa.Column("status", sa.String(length=16), nullable=True))
    op.execute(
        "UPDATE memberships"
        " SET status = CASE WHEN valid_to IS NULL THEN 'active' ELSE 'historical' END"
    )
    op.alter_column("memberships", "status", nullable=False)
    op.create_check_constraint(
        "ck_memberships_status",
        "memberships",
        "status IN ('active', 'historical', 'entered_in_error')",
    )
    op.create_check_constraint(
        "ck_memberships_status_period",
        "memberships",
        "status = 'entered_in_error' OR (status = 'active') = (valid_to IS NULL)",
    )
    _one_active_per_group("status = 'active'")

    op.add_column("memberships", sa.Column("created_by_user", sa.Text(), nullable=True))
    op.add_column("memberships", sa.Column("created_by_unit", sa.Text(), nullable=True))
    op.execute(
        "UPDATE memberships AS m"
        " SET created_by_user = a.user_id, created_by_unit = a.unit_id"
        " FROM (SELECT DISTINCT ON (membership_id) membership_id, user_id, unit_id"
        "       FROM audit_log"
        "       WHERE action = 'customer_group.add' AND membership_id IS NOT NULL"
        "       ORDER BY membership_id, id) AS a"
        " WHERE a.membership_id = m.membership_id"
    )
    op.execute(
        "UPDATE memberships"
        " SET created_by_user = updated_by_user, created_by_unit = updated_by_unit"
        " WHERE created_by_user IS NULL AND version = 1"
    )
    op.alter_column("memberships", "updated_by_user", nullable=True)
    op.alter_column("memberships", "updated_by_unit", nullable=True)
    op.execute(
        "UPDATE memberships SET updated_by_user = NULL, updated_by_unit = NULL WHERE version = 1"
    )


def downgrade() -> None:
    # Lossy where revision 2 said more than revision 1 can: an entered-in-error membership
    # becomes historical (ended on its own valid_from if it had no end), and an unknown
    # last changer is written as its creator, or 'unknown'.
    op.execute(
        "UPDATE memberships SET valid_to = valid_from"
        " WHERE status = 'entered_in_error' AND valid_to IS NULL"
    )
    op.execute(
        "UPDATE memberships"
        " SET updated_by_user = coalesce(created_by_user, 'unknown'),"
        "     updated_by_unit = coalesce(created_by_unit, 'unknown')"
        " WHERE updated_by_user IS NULL OR updated_by_unit IS NULL"
    )
    op.alter_column("memberships", "updated_by_user", nullable=False)
    op.alter_column("memberships", "updated_by_unit", nullable=False)
    op.drop_column("memberships", "created_by_unit")
    op.drop_column("memberships", "created_by_user")
    _one_active_per_group("valid_to IS NULL")
    op.drop_constraint("ck_memberships_status_period", "memberships", type_="check")
    op.drop_constraint("ck_memberships_status", "memberships", type_="check")
    op.drop_column("memberships", "status")
