"""initial schema: events, levels, reservations, outbox, dead_letters, sources

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("location", sa.String(128)),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.BigInteger, nullable=False),
        sa.Column("applied_at", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("source", sa.String(128)),
        sa.Column("seq", sa.BigInteger),
        sa.Column("hold_id", sa.String(255)),
        sa.Column("order_id", sa.String(255)),
        sa.Column("channel", sa.String(64)),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("remote_location", sa.String(255)),
        sa.UniqueConstraint("connector", "event_id", name="uq_events_connector_event_id"),
    )
    op.create_table(
        "levels",
        sa.Column("sku", sa.String(255), primary_key=True),
        sa.Column("location", sa.String(128), primary_key=True),
        sa.Column("on_hand", sa.BigInteger, nullable=False),
        sa.Column("watermark", sa.BigInteger),
        sa.Column("floor", sa.BigInteger),
        sa.Column("reported_at", sa.BigInteger),
        sa.Column("tail", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "reservations",
        sa.Column("res_id", sa.String(255), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("location", sa.String(128), nullable=False),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("fulfilled_at", sa.BigInteger),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("order_id", sa.String(255)),
        sa.Column("oversold", sa.Boolean, nullable=False),
    )
    op.create_index("ix_reservations_state", "reservations", ["state"])
    op.create_table(
        "outbox",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(255), primary_key=True),
        sa.Column("location", sa.String(255), primary_key=True),
        sa.Column("desired", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("committed_at", sa.BigInteger, nullable=False),
        sa.Column("pushed", sa.BigInteger),
        sa.Column("pushed_version", sa.BigInteger, nullable=False),
        sa.Column("remote", sa.BigInteger),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sources",
        sa.Column("connector", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(128), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for name in ("sources", "dead_letters", "outbox", "reservations", "levels", "events"):
        op.drop_table(name)
