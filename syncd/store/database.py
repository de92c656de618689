"""Opening the database: SQLite (aiosqlite, the default) or PostgreSQL (asyncpg).

SQLite runs in WAL mode with `synchronous=NORMAL` and a `busy_timeout`. pysqlite's own transaction
handling is turned off and SQLAlchemy emits `BEGIN IMMEDIATE` itself, as the SQLAlchemy docs
prescribe for (aio)sqlite: the write lock is taken at the start, so a transaction that reads and
then writes can never fail halfway with SQLITE_BUSY.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["BUSY_TIMEOUT_MS", "open_engine", "sqlite_url", "upgrade"]

BUSY_TIMEOUT_MS = 5000
CACHE_KIB = 131_072  # 128 MiB of page cache per connection
MIGRATIONS = Path(__file__).with_name("migrations")


def sqlite_url(state_dir: str | Path) -> str:
    return f"sqlite+aiosqlite:///{Path(state_dir) / 'syncd.db'}"


def open_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, pool_size=2, max_overflow=2)
        _sqlite_setup(engine)
        return engine
    return create_async_engine(url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _sqlite_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA temp_store=MEMORY")
        # the default page cache (2 MiB) thrashes once levels and the ledger index outgrow it
        cur.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade_sync(connection: Connection, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` (also done automatically at start)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_sync, revision)
