"""SQLite's WAL is checkpointed by a thread beside the pool, with the commits' own checkpoint
kept as a backstop (`syncd.store.wal`): the rounds copy what the writer commits, the WAL stays
bounded however steadily a writer writes, and closing the pool leaves the database file
complete with no WAL beside it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store import open_engine, sqlite_url, upgrade
from syncd.store.database import wal_checkpointer
from syncd.store.wal import BACKSTOP_PAGES, WalCheckpointer
from tests.core import until

ROW_BYTES = 2000
ROWS_PER_COMMIT = 500  # about 1 MB a commit
MB = 1_000_000


def _wal_size(state: Path) -> int:
    wal = state / "syncd.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def _running(wal: WalCheckpointer) -> bool:
    return wal.running  # a call: the checks before and after a dispose are of two moments


def _rounds_after(wal: WalCheckpointer, rounds: int) -> Callable[[], bool]:
    """Two more rounds of the thread: the second one started after the caller's commit."""
    return lambda: wal.checkpoints >= rounds + 2


async def _write_mb(db: AsyncEngine, i: int) -> None:
    async with db.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO dead_letters (connector, origin, reason, payload, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [("pos", f"c{i}", "r", b"x" * ROW_BYTES, j) for j in range(ROWS_PER_COMMIT)])


def _count(state: Path) -> int:
    with sqlite3.connect(state / "syncd.db") as con:
        return int(con.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


async def test_the_rounds_copy_what_the_commits_leave(tmp_path: Path) -> None:
    """Between bursts of commits the thread copies everything, so the next write starts the
    WAL over: it holds about a burst, far under the backstop."""
    db = open_engine(sqlite_url(tmp_path), wal_checkpoint_every=0.05)
    wal = wal_checkpointer(db)
    assert wal is not None
    try:
        await upgrade(db)
        async with db.connect() as conn:
            setting = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
        assert setting == BACKSTOP_PAGES  # a commit checkpoints only past the backstop
        assert _running(wal)
        for i in range(40):
            await _write_mb(db, i)
            if i % 5 == 4:
                await until(_rounds_after(wal, wal.checkpoints))
        assert 0 < _wal_size(tmp_path) < 10 * MB < BACKSTOP_PAGES * 4096
    finally:
        await db.dispose()
    assert not _running(wal)
    assert not (tmp_path / "syncd.db-wal").exists()  # the last connection checkpointed it all
    assert _count(tmp_path) == 40 * ROWS_PER_COMMIT


async def test_steady_writes_stay_within_the_backstop(tmp_path: Path) -> None:
    """Commits back to back land during nearly every round, so no round leaves the WAL fully
    copied when a write begins; the commits' own checkpoint past the backstop bounds it."""
    db = open_engine(sqlite_url(tmp_path), wal_checkpoint_every=0.05)
    try:
        await upgrade(db)
        for i in range(120):
            await _write_mb(db, i)
        # about the backstop plus the commits made during one round; with no backstop, the
        # WAL holds all 120 MB
        assert _wal_size(tmp_path) < 2 * BACKSTOP_PAGES * 4096 < 120 * MB
    finally:
        await db.dispose()
    assert _count(tmp_path) == 120 * ROWS_PER_COMMIT


async def test_the_thread_follows_the_pool(tmp_path: Path) -> None:
    """It stops with the pool's last connection and starts again with the next one; a database
    reopened after that finds every commit."""
    db = open_engine(sqlite_url(tmp_path), wal_checkpoint_every=0.05)
    wal = wal_checkpointer(db)
    assert wal is not None
    try:
        await upgrade(db)
        assert _running(wal)
        await db.dispose()
        assert not _running(wal)
        async with db.begin() as conn:  # the pool opens a connection again
            await conn.exec_driver_sql("INSERT INTO checkpoints (name, value) VALUES ('a', 1)")
        assert _running(wal)
    finally:
        await db.dispose()
    assert not _running(wal)
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
    assert _running(wal)
    await until(lambda: wal.checkpoints > 0)
    wal.detach(2)
    assert not _running(wal)


async def test_a_failing_round_is_logged_and_the_next_ones_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file cannot be opened yet (its directory is missing): the rounds fail, once logged,
    and the first round after it appears checkpoints it."""
    path = tmp_path / "later" / "x.db"
    wal = WalCheckpointer(str(path), every=0.01)
    wal.attach(1)
    try:
        await until(lambda: "WAL checkpoint of" in caplog.text)
        assert wal.checkpoints == 0
        path.parent.mkdir()
        with sqlite3.connect(path) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("CREATE TABLE t (x)")
        await until(lambda: wal.checkpoints > 0)
    finally:
        wal.detach(1)
    assert caplog.text.count("WAL checkpoint of") == 1  # once a minute at most
    assert "unable to open database file" in caplog.text
