"""indexes for pruning the inbox, dead letters and parked outbox rows by age

Revision ID: 0007_retention
Revises: 0006_outbox_parking
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0007_retention"
down_revision = "0006_outbox_parking"
branch_labels = None
depends_on = None

# The pruner deletes the oldest rows past their retention in small batches: with these,
# each batch reads only the rows it deletes.
_INDEXES = (
    ("ix_inbox_processed_at", "inbox", "processed_at"),
    ("ix_dead_letters_created_at", "dead_letters", "created_at"),
    ("ix_outbox_parked_parked_at", "outbox_parked", "parked_at"),
)


def upgrade() -> None:
    for name, table, column in _INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _column in _INDEXES:
        op.drop_index(name, table_name=table)
