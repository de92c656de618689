"""The inbox directory: which files are ready to read, and where they go once dealt with.

```
inbox/            files dropped by the warehouse's EDI translator
inbox/processed/  files whose counts are committed (acknowledged)
inbox/failed/     files that could not be used, each with `<name>.error` beside it
```

A file is ready once it has *settled*: its size, modification time and inode were seen unchanged
by two listings at least `settle` seconds apart. That is how a reader of a plain directory tells
a finished file from one still being written (FTP and SFTP servers give no other signal). Names
starting with "." and ending in ".tmp" or ".part" are never read: senders that write under a
temporary name and rename into place are ready at once after the rename and the settle delay.

Methods that touch the file system block; the connector calls them through `asyncio.to_thread`.
The settle and in-flight bookkeeping (`ready`, `release`) is only touched from the event loop.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

__all__ = ["IGNORED_SUFFIXES", "Inbox", "Stat", "Where", "ignored"]

IGNORED_SUFFIXES = (".tmp", ".part")
Where = Literal["processed", "failed"]


@dataclass(frozen=True, slots=True)
class Stat:
    """What must stay the same for a file to count as settled (and as the file we read)."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


class Inbox:
    def __init__(self, root: Path, pattern: str = "*", settle: float = 1.0) -> None:
        self.root = root
        self.processed = root / "processed"
        self.failed = root / "failed"
        self.pattern = pattern
        self.settle = settle
        # handed to the engine, not yet committed or failed: name -> delivery token
        self.in_flight: dict[str, int] = {}
        self._tokens = itertools.count(1)
        self._seen: dict[str, tuple[Stat, float]] = {}  # name -> (stat, unchanged since)

    # -- blocking ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the inbox and its `processed/` and `failed/` directories; check readable."""
        for d in (self.root, self.processed, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.root):
            pass

    def listing(self) -> dict[str, Stat]:
        """The candidate files of the inbox (regular files matching the pattern)."""
        self.prepare()
        out: dict[str, Stat] = {}
        with os.scandir(self.root) as it:
            for entry in it:
                name = entry.name
                if ignored(name) or not fnmatchcase(name, self.pattern):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    out[name] = Stat.of(entry.stat())
                except OSError:  # vanished between listing and stat
                    continue
        return out

    def read(self, name: str, expected: Stat, limit: int) -> bytes | None:
        """At most `limit` + 1 bytes of the file, or None when it is not the settled file any
        more (changed, replaced or gone): it is then left to settle again."""
        try:
            with open(self.root / name, "rb") as f:
                if Stat.of(os.fstat(f.fileno())) != expected:
                    return None
                data = f.read(limit + 1)
                if Stat.of(os.fstat(f.fileno())) != expected:
                    return None
        except FileNotFoundError:
            return None
        return data

    def move(self, name: str, expected: Stat, where: Where, note: str | None = None) -> Path | None:
        """Move the file to `processed/` or `failed/` (with `note` written to `<name>.error`
        beside it). An existing name there gets a UTC timestamp suffix. Returns None, moving
        nothing, when the file is not the one that was read any more (or is gone)."""
        src = self.root / name
        try:
            if Stat.of(src.stat()) != expected:
                return None
        except FileNotFoundError:
            return None
        dest_dir = self.processed if where == "processed" else self.failed
        dest = _free_name(dest_dir, name)
        os.replace(src, dest)
        if note is not None:
            error = dest.with_name(dest.name + ".error")
            error.write_text(note if note.endswith("\n") else note + "\n", encoding="utf-8")
        return dest

    # -- bookkeeping (event loop) -----------------------------------------------------------------

    def ready(self, listing: dict[str, Stat], now: float) -> list[tuple[str, Stat]]:
        """The settled files that are not in flight, in name order."""
        for name in list(self._seen):
            if name not in listing:
                del self._seen[name]
        out: list[tuple[str, Stat]] = []
        for name in sorted(listing):
            stat = listing[name]
            seen = self._seen.get(name)
            if seen is None or seen[0] != stat:
                self._seen[name] = (stat, now)  # first sight, or changed: start settling
                continue
            if name not in self.in_flight and now - seen[1] >= self.settle:
                out.append((name, stat))
        return out

    def hold(self, name: str) -> int:
        """The file is being delivered: not ready again until `release`d with this token."""
        token = next(self._tokens)
        self.in_flight[name] = token
        return token

    def release(self, name: str, token: int) -> None:
        """The delivery `token` of the file is over (moved, or to be read again): forget it,
        unless a newer delivery of the same name has started since."""
        if self.in_flight.get(name) == token:
            del self.in_flight[name]
            self._seen.pop(name, None)


def _free_name(directory: Path, name: str) -> Path:
    dest = directory / name
    if not dest.exists():
        return dest
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    dest = directory / f"{name}.{stamp}"
    n = 1
    while dest.exists():
        dest = directory / f"{name}.{stamp}-{n}"
        n += 1
    return dest
