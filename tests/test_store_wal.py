"""SQLite's WAL is checkpointed by a thread beside the pool, not in the commits
(`syncd.store.wal`): the commits never copy pages, the WAL stays bounded while a writer keeps
writing, and closing the pool leaves the database file complete with no WAL beside it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from syncd.store import open_engine, sqlite_url, upgrade
from syncd.store.database import wal_checkpointer
from syncd.store.wal import WalCheckpointer
from tests.core import until

ROW_BYTES = 2000
ROWS_PER_COMMIT = 500  # about 1 MB a commit: 250 pages, a quarter of SQLite's default threshold


def _wal_size(state: Path) -> int:
    wal = state / "syncd.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def _rounds_after(wal: WalCheckpointer, rounds: int) -> Callable[[], bool]:
    """Two more rounds of the thread: the second one started after the caller's commit."""
    return lambda: wal.checkpoints >= rounds + 2


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "syncd-wal-checkpoint"]


async def test_the_thread_checkpoints_and_the_commits_do_not(tmp_path: Path) -> None:
    db = open_engine(sqlite_url(tmp_path), wal_checkpoint_every=0.05)
    try:
        await upgrade(db)
        async with db.connect() as conn:
            setting = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
        assert setting == 0  # a commit never checkpoints
        assert len(_checkpoint_threads()) == 1
        wal = wal_checkpointer(db)
        assert wal is not None
        written = 0
        for i in range(40):
            async with db.begin() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO dead_letters (connector, origin, reason, payload, received_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [("pos", f"c{i}", "r", b"x" * ROW_BYTES, j) for j in range(ROWS_PER_COMMIT)])
            written += ROW_BYTES * ROWS_PER_COMMIT
            if i % 5 == 4:  # two rounds of the thread: the second starts after this commit
                await until(_rounds_after(wal, wal.checkpoints))
        # each round copied what was committed, and the next write started the WAL over from
        # its beginning: the file holds about five commits, not forty
        assert written == 40_000_000
        assert 0 < _wal_size(tmp_path) < written / 4
    finally:
        await db.dispose()
    assert not _checkpoint_threads()
    assert not (tmp_path / "syncd.db-wal").exists()  # the last connection checkpointed it all
    with sqlite3.connect(tmp_path / "syncd.db") as con:
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (20_000,)


async def test_the_thread_follows_the_pool(tmp_path: Path) -> None:
    """It stops with the pool's last connection and starts again with the next one; a database
    reopened after that finds every commit."""
    db = open_engine(sqlite_url(tmp_path), wal_checkpoint_every=0.05)
    await upgrade(db)
    assert len(_checkpoint_threads()) == 1
    await db.dispose()
    assert not _checkpoint_threads()
    async with db.begin() as conn:  # the pool opens a connection again
        await conn.exec_driver_sql("INSERT INTO checkpoints (name, value) VALUES ('a', 1)")
    assert len(_checkpoint_threads()) == 1
    await db.dispose()
    await asyncio.sleep(0)
    assert not _checkpoint_threads()
    assert not (tmp_path / "syncd.db-wal").exists()
    with sqlite3.connect(tmp_path / "syncd.db") as con:
        assert con.execute("SELECT value FROM checkpoints WHERE name = 'a'").fetchone() == (1,)


async def test_only_the_last_attached_connection_stops_the_thread(tmp_path: Path) -> None:
    """A close of a connection that never attached (its setup failed) changes nothing."""
    with sqlite3.connect(tmp_path / "x.db") as con:
        con.execute("PRAGMA journal_mode=WAL")
    wal = WalCheckpointer(str(tmp_path / "x.db"), every=0.01)
    wal.attach(1)
    wal.attach(2)
    wal.detach(3)  # never attached
    wal.detach(1)
    assert len(_checkpoint_threads()) == 1
    await until(lambda: wal.checkpoints > 0)
    wal.detach(2)
    assert not wal.running
    assert not _checkpoint_threads()
