"""SQLite's WAL checkpoints, run from a thread of their own instead of inside the writer's
commits.

In WAL mode a commit appends pages to the `-wal` file; a *checkpoint* copies them back into the
database file and syncs it. By default (`wal_autocheckpoint=1000`) the commit that takes the
WAL past 1,000 pages runs that checkpoint itself, before it returns: every few batches the
engine's commit, and with it every acknowledgement, waits ten milliseconds or more for pages of
earlier commits (a stop's commit of the whole checkpoint, a hundred). The SQLite documentation
gives the alternative: turn the automatic checkpoints off and run them "in a separate thread"
(https://sqlite.org/wal.html#automatic_checkpoint). `WalCheckpointer` does that: while the pool
holds a connection to the file, a thread with its own connection runs a `PASSIVE` checkpoint
every `every` seconds. A passive checkpoint takes no lock that a writer waits for; it copies
what is committed, sqlite3 releases the GIL while it runs, and once it has copied everything the
next write transaction starts the WAL over from its beginning, so the file stays bounded by
what is written in `every` seconds. When the pool's last connection closes the thread stops;
its connection is then the last one, and closing it checkpoints what is left and removes the
WAL, as SQLite does for a last connection.

Durability is unchanged: with `synchronous=NORMAL` a commit is in the WAL (safe from a crash of
the process, and of the machine up to the last checkpoint's sync) whoever checkpoints, and a
start after a kill reads the WAL back as it always does.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

__all__ = ["WalCheckpointer"]

log = logging.getLogger("syncd.store")

_ERROR_EVERY = 60.0  # seconds between two logs of a failing checkpoint


class WalCheckpointer:
    """Checkpoints the WAL of the SQLite file `path` from a thread while some pool connection
    is attached (`attach` when one opens, `detach` when it closes, each by the connection's
    `id`: a close of a connection that never attached, one whose setup failed, changes
    nothing)."""

    def __init__(self, path: str, every: float = 1.0, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.every = every
        self.busy_timeout_ms = busy_timeout_ms
        self.checkpoints = 0  # completed checkpoint calls (tests, diagnosis)
        self._users: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._logged_at = -_ERROR_EVERY

    def attach(self, user: int) -> None:
        """A pool connection opened: the thread runs (started if it is not)."""
        with self._lock:
            self._users.add(user)
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="syncd-wal-checkpoint",
                    daemon=True)
                self._thread.start()

    def detach(self, user: int) -> None:
        """A pool connection closed: after the last one the thread stops, and its connection
        closes last (SQLite's final checkpoint, the WAL removed)."""
        with self._lock:
            if user not in self._users:
                return
            self._users.discard(user)
            if self._users or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stop.set()
        thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self, stop: threading.Event) -> None:
        try:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("cannot open %s for WAL checkpoints: %s", self.path, exc)
            return
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            while not stop.wait(self.every):
                self._checkpoint(con)
        finally:
            con.close()

    def _checkpoint(self, con: sqlite3.Connection) -> None:
        try:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the next round tries again; the WAL grows meanwhile
            now = time.monotonic()
            if now - self._logged_at >= _ERROR_EVERY:
                self._logged_at = now
                log.error("WAL checkpoint of %s failed (tried again every %g s): %s",
                          self.path, self.every, exc)
            return
        self.checkpoints += 1
