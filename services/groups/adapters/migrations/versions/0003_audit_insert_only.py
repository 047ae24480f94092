"""the PDL audit log becomes insert-only, with a hash chain in its own insert-only table

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Every statement is idempotent: the downgrade keeps everything (see `downgrade`), so an
upgrade after a downgrade finds the table, function and triggers already there.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Refuses UPDATE, DELETE and TRUNCATE for every role, the tables' owner included; only a
# superuser (or the owner) can get past it, by disabling the trigger, which the hash
# chain then exposes.
_REFUSE = """
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% on % refused: the PDL audit log is insert-only', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""

_CHAIN = """
CREATE TABLE IF NOT EXISTS audit_chain (
  audit_id bigint PRIMARY KEY REFERENCES audit_log (id),
  position bigint NOT NULL UNIQUE,
  prev_hash bytea NOT NULL,
  hash bytea NOT NULL,
  sealed_at timestamptz NOT NULL DEFAULT now()
)
"""


def _insert_only(table: str) -> str:
    return (
        f"CREATE OR REPLACE TRIGGER {table}_insert_only"
        f" BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
    )


def upgrade() -> None:
    op.execute(_REFUSE)
    op.execute(_CHAIN)
    op.execute(_insert_only("audit_log"))
    op.execute(_insert_only("audit_chain"))


def downgrade() -> None:
    # Deliberately nothing: PDL requires the log to be kept, and a rollback of the code
    # must not open a window in which rows can be changed or removed unnoticed. Older
    # code only inserts and selects, so it runs unchanged against the protected tables.
    pass
