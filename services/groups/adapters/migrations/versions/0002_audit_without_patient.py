"""audit rows that name no patient (a refused caller, an extract by user or unit)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("audit_log", "personnummer", existing_type=sa.String(12), nullable=True)


def downgrade() -> None:
    # Rows without a patient are never deleted (PDL); the column simply stays nullable.
    pass
