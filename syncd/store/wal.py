"""SQLite's WAL checkpoints, run mostly from a thread of their own instead of inside the
writer's commits.

In WAL mode a commit appends pages to the `-wal` file; a *checkpoint* copies them back into the
database file and syncs it. By default (`wal_autocheckpoint=1000`) the commit that takes the
WAL past 1,000 pages runs that checkpoint itself, before it returns: every few batches the
engine's commit, and with it every acknowledgement, waits ten milliseconds or more for pages of
earlier commits (a stop's commit of the whole checkpoint, a hundred). The SQLite documentation
gives the alternative: run the checkpoints "in a separate thread"
(https://sqlite.org/wal.html#automatic_checkpoint). `WalCheckpointer` does that: while the pool
holds a connection to the file, a thread with its own connection runs a `PASSIVE` checkpoint
every `every` seconds. A passive checkpoint takes no lock that a writer waits for; it copies
what is committed, and sqlite3 releases the GIL while it runs.

A thread alone does not bound the file. SQLite starts the WAL over only when a write
transaction begins with every frame already copied, and under steady writes a commit lands
during nearly every round, so the file would keep growing. So the pool's connections keep the
automatic checkpoint as a backstop, at `BACKSTOP_PAGES` rather than 1,000. Under steady writes
it fires about every `BACKSTOP_PAGES` pages all the same, but finds most frames already copied
by the rounds: the commit copies the rest, and since the engine is the one writer, the next
write transaction starts the WAL over. A commit whose checkpoint finds a round in progress gets
SQLITE_BUSY and leaves it to the next commit, so the file stays within about the backstop plus
the commits made during one round. (As with any WAL, a reader in another process that stays
open, a backup say, can hold it longer.) If the thread cannot open the file or its rounds fail,
the backstop alone bounds it, as SQLite's default does.

When the pool's last connection closes, the thread stops (the pool's `close` event comes before
the connection is closed, so that connection is the last one and its close checkpoints what is
left and removes the WAL, as SQLite does for any last connection). Durability is unchanged: with
`synchronous=NORMAL` a commit is in the WAL whoever checkpoints, and a start after a kill reads
the WAL back as it always does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time

__all__ = ["BACKSTOP_PAGES", "WalCheckpointer"]

log = logging.getLogger("syncd.store")

# pages (4 KiB by default) past which a commit of the pool checkpoints itself: 32 MiB, more than
# a second of the engine's writes at full rate, so that the rounds have copied most of them
BACKSTOP_PAGES = 8000
_ERROR_EVERY = 60.0  # seconds between two logs of a failing checkpoint


class WalCheckpointer:
    """Checkpoints the WAL of the SQLite file `path` from a thread while some pool connection
    is attached (`attach` when one opens, `detach` when it closes, each by the connection's
    `id`: a close of a connection that never attached, one whose setup failed, changes
    nothing)."""

    def __init__(self, path: str, every: float = 1.0, busy_timeout_ms: int = 5000) -> None:
        self.path = os.path.abspath(path)  # as SQLAlchemy opens it: a later chdir changes nothing
        self.every = every
        self.busy_timeout_ms = busy_timeout_ms
        self.checkpoints = 0  # rounds that copied every committed frame (tests, diagnosis)
        self._users: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._logged_at = -_ERROR_EVERY

    def attach(self, user: int) -> None:
        """A pool connection opened: the thread runs (started if it is not)."""
        with self._lock:
            if self._thread is None:
                stop = threading.Event()
                thread = threading.Thread(target=self._run, args=(stop,),
                                          name="syncd-wal-checkpoint", daemon=True)
                thread.start()  # if it cannot start, nothing here has changed
                self._thread, self._stop = thread, stop
            self._users.add(user)

    def detach(self, user: int) -> None:
        """A pool connection closed: after the last one the thread stops. The caller waits for
        the round in progress, if any (a second of writes at most, copied while the engine
        ran)."""
        with self._lock:
            if user not in self._users:
                return
            self._users.discard(user)
            if self._users or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not threading.current_thread():  # a connection collected on this thread
            thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self, stop: threading.Event) -> None:
        con: sqlite3.Connection | None = None
        try:
            while not stop.wait(self.every):
                try:
                    if con is None:
                        con = self._connect()
                    busy = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]
                except Exception as exc:  # a new connection next round; the backstop meanwhile
                    self._failed(exc)
                    if con is not None:
                        with contextlib.suppress(Exception):
                            con.close()
                    con = None
                    continue
                if not busy:  # not cut short by a commit's own checkpoint
                    self.checkpoints += 1
        finally:
            if con is not None:
                con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        except BaseException:
            con.close()
            raise
        return con

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _ERROR_EVERY:
            self._logged_at = now
            log.error("WAL checkpoint of %s failed (tried again every %g s; the commits "
                      "checkpoint past %d pages meanwhile): %s",
                      self.path, self.every, BACKSTOP_PAGES, exc)
