"""The outbox in memory: the desired quantity of every channel × SKU [× location].

The engine owns the desired side (`desired`, `version`, `committed_at`) and changes it only after
the commit that made it durable. The channel's pusher owns the pushed side (`pushed`,
`pushed_version`, `remote`, `state`, `attempts`, `last_error`, `next_attempt_at`). A row is pending
while `pushed_version != version`. Coalescing is free: a row holds one desired value, so a channel
that was down for an hour gets one current value per SKU, not an hour of history.

Rows whose pushed side changed, and rows a pusher took, are put in `dirty`: the engine writes them
whole at its next flush of the pushed side (every `outbox_flush_every`), in one of its commits, so
SQLite keeps a single writer. Rows that only took a new desired value are put in `moved`: the
engine writes only their desired side (`repository.upsert_outbox_desired`), on the slower clock
of the desired side (`desired_flush_every`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from connectors.base import PushItem

from .metrics import Metrics
from .model import kept_key
from .store.repository import OutboxRow

__all__ = ["OKey", "Outbox", "OutboxRow", "idempotency_key"]

OKey = tuple[str, str, str]  # (channel, sku, channel-side location)


def _noop() -> None:
    return None


def idempotency_key(
    channel: str, sku: str, location: str, version: int, desired: int, committed_at: int
) -> str:
    """Stable across retries of the same push (also after a restart that reloads its row),
    different for every new version and for a drift re-push (`force_repush` stamps the row
    anew: the channel shows another value, so the push must not pass for one already applied).

    The version number alone is not enough: the desired side is flushed lazily, so after a
    crash a version number that was already pushed can come back for another value (v4 = 7 and
    v5 = 6 pushed, neither flushed: the restart makes 6 or 7 its v4 again). The quantity and the
    moment the value was committed tell them apart, so a channel that remembers keys never takes
    a new push for a retry of an old one."""
    raw = f"{channel}\x1f{sku}\x1f{location}\x1f{version}\x1f{desired}\x1f{committed_at}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class Outbox:
    def __init__(self, metrics: Metrics, rows: dict[OKey, OutboxRow] | None = None) -> None:
        self.metrics = metrics
        self.rows: dict[OKey, OutboxRow] = rows if rows is not None else {}
        # channel -> its pending keys (a dict: ordered, the oldest first)
        self.pending: dict[str, dict[OKey, None]] = {}
        # the pushed side changed, or a pusher took the row: write the whole row
        self.dirty: set[OKey] = set()
        self.moved: set[OKey] = set()  # a new desired value only: write the desired side
        self._wake: dict[str, asyncio.Event] = {}
        self._coalesced: dict[str, Any] = {}  # channel -> its labelled counter
        for key, row in self.rows.items():
            if row.pending:
                self.pending.setdefault(key[0], {})[key] = None
        # called when the pushed side changed, so the engine persists it soon
        self.on_dirty: Callable[[], None] = _noop

    def wake_event(self, channel: str) -> asyncio.Event:
        ev = self._wake.get(channel)
        if ev is None:
            ev = self._wake[channel] = asyncio.Event()
            if self.pending.get(channel):
                ev.set()
        return ev

    def pending_count(self, channel: str) -> int:
        return len(self.pending.get(channel, ()))

    def _mark_pending(self, key: OKey) -> None:
        self.pending.setdefault(key[0], {})[key] = None

    # -- engine side (after commit) -------------------------------------------------------------

    def publish(self, figures: Iterable[tuple[OKey, int]], committed_at: int) -> set[str]:
        """Take the figures of a committed batch (`(key, quantity)`): a new key, or a key whose
        desired value changed, gets the next version and is pending (its key goes in `moved`);
        an unchanged one is left alone. Returns the channels that have new work. The per-figure
        path of every batch, kept lean: one read of each row."""
        rows = self.rows
        pending = self.pending
        moved = self.moved
        channels: set[str] = set()
        coalesced: Counter[str] = Counter()
        ch_name = ""
        ch_pending: dict[OKey, None] = {}
        for key, desired in figures:
            row = rows.get(key)
            if row is None:
                key = kept_key(*key)
                rows[key] = OutboxRow(desired, 1, committed_at, key=key)
            elif row.desired == desired:
                continue
            else:
                key = row.key or key  # the kept key, not the figure's copy
                if row.pushed_version != row.version:  # pending: this value replaces it
                    coalesced[key[0]] += 1
                row.desired = desired
                row.version += 1
                row.committed_at = committed_at
                row.attempts = 0
                row.next_attempt_at = 0
                row.state = "pending"
            channel = key[0]
            if channel != ch_name:
                ch_name = channel
                ch_pending = pending.setdefault(channel, {})
                channels.add(channel)
            ch_pending[key] = None
            moved.add(key)
        for channel, n in coalesced.items():
            child = self._coalesced.get(channel)
            if child is None:
                child = self._coalesced[channel] = self.metrics.coalesced.labels(channel)
            child.inc(n)
        return channels

    def take_unwritten(self, desired: bool = True) -> tuple[set[OKey], set[OKey]]:
        """The keys to write now: whole rows (`dirty`), and with `desired` the desired side of
        the others (`moved`; without it they wait for a later call). What is taken is no longer
        unwritten; a write that fails gives it to `put_back`."""
        whole = self.dirty
        self.dirty = set()
        if not desired:
            self.moved -= whole  # a whole row carries its desired side
            return whole, set()
        moved = self.moved - whole
        self.moved = set()
        return whole, moved

    def put_back(self, whole: set[OKey], moved: set[OKey]) -> None:
        """Keys from `take_unwritten` whose write was not committed: written next time."""
        self.dirty |= whole
        self.moved |= moved

    def force_repush(self, key: OKey, remote: int, committed_at: int) -> None:
        """Drift: the channel shows `remote`; push the desired value again (rule 5)."""
        row = self.rows.get(key)
        if row is None:
            return
        key = row.key or key
        row.remote = remote
        row.pushed_version = -1
        row.committed_at = committed_at
        row.state = "pending"
        row.attempts = 0
        row.next_attempt_at = 0
        self._mark_pending(key)
        self.dirty.add(key)

    def is_drift(self, key: OKey, shown: int) -> bool | None:
        """Whether a channel showing `shown` has drifted; None when the key is unknown."""
        row = self.rows.get(key)
        if row is None:
            return None
        return shown != row.desired and shown != row.pushed

    def notify(self, channels: Iterable[str]) -> None:
        for ch in channels:
            self.wake_event(ch).set()

    # -- pusher side ----------------------------------------------------------------------------

    def take(self, channel: str, limit: int, now: int) -> tuple[list[PushItem], int | None]:
        """Up to `limit` pending items that are due, and the earliest not-yet-due attempt time.

        A row taken for a push is also written whole at the engine's next flush of the pushed
        side (`dirty`), rather than waiting for the desired side's: a restart after the push
        then finds the value being pushed (unless the daemon died within that flush's
        interval), so a figure that flapped back meanwhile is pending again."""
        keys = self.pending.get(channel)
        items: list[PushItem] = []
        later: int | None = None
        if not keys:
            return items, None
        stale: list[OKey] = []
        for key in keys:
            row = self.rows[key]
            if not row.pending:
                stale.append(key)
                continue
            if row.next_attempt_at > now:
                later = row.next_attempt_at if later is None else min(later, row.next_attempt_at)
                continue
            items.append(self.item(channel, key[1], key[2], row))
            self.dirty.add(key)
            if len(items) >= limit:
                break
        for k in stale:
            del keys[k]
        return items, later

    def item(self, channel: str, sku: str, loc: str, row: OutboxRow) -> PushItem:
        return PushItem(
            channel=channel, sku=sku, location=loc, desired=row.desired, version=row.version,
            remote=row.remote,
            idempotency_key=idempotency_key(channel, sku, loc, row.version, row.desired,
                                            row.committed_at),
        )

    def refresh(self, items: list[PushItem]) -> list[PushItem]:
        """The same keys with their current desired values (a retry pushes the latest)."""
        out = []
        for it in items:
            row = self.rows[(it.channel, it.sku, it.location)]
            if row.pending:
                out.append(self.item(it.channel, it.sku, it.location, row))
        return out

    def settle(self, item: PushItem, *, state: str, pushed: int | None, remote: int | None,
               error: str | None, retry_at: int = 0) -> bool:
        """Record a push result. Returns True when the row is no longer pending."""
        key = (item.channel, item.sku, item.location)
        row = self.rows[key]
        key = row.key or key
        self.dirty.add(key)
        self.on_dirty()
        if state in ("ok", "accepted", "failed"):
            row.attempts = 0
            row.next_attempt_at = 0
            row.last_error = error
            if state != "failed":
                row.pushed = pushed
                row.remote = remote
            if row.version == item.version:
                row.pushed_version = item.version
                row.state = state
                self.pending.get(item.channel, {}).pop(key, None)
                return True
            return False
        # transient or conflict: stays pending
        row.attempts += 1
        row.last_error = error
        row.next_attempt_at = retry_at
        if remote is not None:
            row.remote = remote
        return False
