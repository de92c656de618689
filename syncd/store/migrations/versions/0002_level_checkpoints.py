"""levels become a checkpoint of the ledger: levels.as_of and the checkpoints table

The engine no longer rewrites a level row in every commit: the ledger (`events`) is the record,
a level row is its state as of event `as_of`, and `checkpoints.replay_from` is the lowest event
id that a level row may still be missing. A start reads the rows and re-applies the ledger from
there (see docs/decisions.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "levels", sa.Column("as_of", sa.BigInteger, nullable=False, server_default="0")
    )
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    # before this revision every level row was written in the commit of its events: current
    op.execute("UPDATE levels SET as_of = (SELECT coalesce(max(id), 0) FROM events)")
    op.execute(
        "INSERT INTO checkpoints (name, value) "
        "SELECT 'levels_replay_from', coalesce(max(id), 0) + 1 FROM events"
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_column("levels", "as_of")
