"""Opening the database: SQLite (aiosqlite, the default) or PostgreSQL (asyncpg).

SQLite runs in WAL mode with `synchronous=NORMAL` and a `busy_timeout`. pysqlite's own transaction
handling is turned off and SQLAlchemy emits `BEGIN IMMEDIATE` itself, as the SQLAlchemy docs
prescribe for (aio)sqlite: the write lock is taken at the start, so a transaction that reads and
then writes can never fail halfway with SQLITE_BUSY. A thread checkpoints the WAL beside the
pool's connections, whose commits do so only past a backstop (`syncd.store.wal`).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .wal import BACKSTOP_PAGES, WalCheckpointer

__all__ = ["BUSY_TIMEOUT_MS", "open_engine", "sqlite_url", "upgrade", "wal_checkpointer"]

BUSY_TIMEOUT_MS = 5000
CACHE_KIB = 131_072  # 128 MiB of page cache per connection
WAL_CHECKPOINT_EVERY = 1.0  # seconds between the checkpoint thread's rounds
MIGRATIONS = Path(__file__).with_name("migrations")


def sqlite_url(state_dir: str | Path) -> str:
    return f"sqlite+aiosqlite:///{Path(state_dir) / 'syncd.db'}"


def open_engine(url: str, *, echo: bool = False,
                wal_checkpoint_every: float = WAL_CHECKPOINT_EVERY) -> AsyncEngine:
    """The database at `url`; on a SQLite file, WAL checkpoints run every
    `wal_checkpoint_every` seconds in a thread (`syncd.store.wal`)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, pool_size=2, max_overflow=2)
        wal = _wal_checkpointer(url, wal_checkpoint_every)
        if wal is not None:
            _CHECKPOINTERS[engine.sync_engine] = wal
        _sqlite_setup(engine, wal)
        return engine
    return create_async_engine(url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True)


_CHECKPOINTERS: weakref.WeakKeyDictionary[Any, WalCheckpointer] = weakref.WeakKeyDictionary()


def wal_checkpointer(engine: AsyncEngine) -> WalCheckpointer | None:
    """The WAL checkpoint thread of a SQLite file's engine (None for other databases)."""
    return _CHECKPOINTERS.get(engine.sync_engine)


def _wal_checkpointer(url: str, every: float) -> WalCheckpointer | None:
    """The checkpoint thread of a database file (none for an in-memory database, nor for a
    URI filename, whose options a plain connection would not share)."""
    parsed = make_url(url)
    path = parsed.database
    if not path or path == ":memory:" or parsed.query.get("uri") or path.startswith("file:"):
        return None
    return WalCheckpointer(path, every, BUSY_TIMEOUT_MS)


def _sqlite_setup(engine: AsyncEngine, wal: WalCheckpointer | None) -> None:
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
        if wal is not None:  # its thread checkpoints; these commits only past the backstop
            cur.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cur.close()
        if wal is not None:  # last: a setup that fails before this has nothing to take back
            wal.attach(id(dbapi_conn))

    if wal is not None:
        @event.listens_for(engine.sync_engine.pool, "close")
        @event.listens_for(engine.sync_engine.pool, "close_detached")
        def _closed(dbapi_conn: Any, *_: Any) -> None:
            wal.detach(id(dbapi_conn))

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
