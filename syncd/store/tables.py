"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; this is what code uses.

Timestamps are BIGINT microseconds since the epoch (UTC), the same on every dialect.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "checkpoints", "dead_letters", "events", "levels", "metadata", "outbox", "reservations",
    "sources",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes an INTEGER PRIMARY KEY the rowid alias (autoincrementing)
_Id = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("type", String(32), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("location", String(128)),
    Column("qty", BigInteger, nullable=False),
    Column("occurred_at", BigInteger, nullable=False),
    Column("applied_at", BigInteger, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
    Column("source", String(128)),
    Column("seq", BigInteger),
    Column("hold_id", String(255)),
    Column("order_id", String(255)),
    Column("channel", String(64)),
    Column("expires_at", BigInteger),
    Column("remote_location", String(255)),
    UniqueConstraint("connector", "event_id"),
)

levels = Table(
    "levels",
    metadata,
    Column("sku", String(255), primary_key=True),
    Column("location", String(128), primary_key=True),
    Column("on_hand", BigInteger, nullable=False),
    Column("watermark", BigInteger),
    Column("floor", BigInteger),
    Column("reported_at", BigInteger),
    Column("tail", Text, nullable=False),  # JSON [[occurred_at, delta], ...]
    Column("version", BigInteger, nullable=False),
    # the highest events.id this row includes: the row is a checkpoint of the ledger, and the
    # events after it are re-applied at start (repository.restore_levels)
    Column("as_of", BigInteger, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)

# named marks of the engine; "levels_replay_from": the lowest events.id a level row may miss
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

reservations = Table(
    "reservations",
    metadata,
    Column("res_id", String(255), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("location", String(128), nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("fulfilled_at", BigInteger),
    Column("updated_at", BigInteger, nullable=False),
    Column("channel", String(64)),
    Column("order_id", String(255)),
    Column("oversold", Boolean, nullable=False),
    Index("ix_reservations_state", "state"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("sku", String(255), primary_key=True),
    Column("location", String(255), primary_key=True),  # channel-side key; "" = pooled
    Column("desired", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("committed_at", BigInteger, nullable=False),
    Column("pushed", BigInteger),
    Column("pushed_version", BigInteger, nullable=False),
    Column("remote", BigInteger),
    Column("state", String(16), nullable=False),  # pending | ok | accepted | failed
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("origin", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("received_at", BigInteger, nullable=False),
)

# last sequence number seen per POS source, for gap detection
sources = Table(
    "sources",
    metadata,
    Column("connector", String(64), primary_key=True),
    Column("source", String(128), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)
