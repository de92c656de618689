"""The engine: the one writer of the ledger.

It drains a bounded ingest queue in batches (whatever is waiting, up to `max_batch` events),
applies them to the in-memory ledger and writes the whole batch's effect in one database
transaction: ledger rows, reservations, dead letters and source sequence numbers (group commit).
Level rows are a checkpoint of the ledger, written a generation at a time and rolled forward from
the ledger at start (`syncd.checkpoint`); outbox rows are derived state, flushed every few
seconds. Only after that commit does any source hear back: `Inbound.on_commit`
runs, API futures resolve, pushers wake up. If the commit fails nothing is acknowledged, the
touched part of the in-memory state is reloaded from the database, and the engine retries with
backoff while the queue applies back-pressure upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import DeadLetter, Inbound

from . import recovery, views
from .checkpoint import Checkpoint
from .figures import Figures
from .ledger import Changes, Ledger, LedgerConfig, Verdict
from .metrics import Metrics
from .model import (
    Event,
    EventType,
    Level,
    Outcome,
    Reservation,
)
from .outbox import OKey, Outbox
from .recovery import brief
from .reservations import OPEN_STATES, res_id_of
from .store import repository as repo

__all__ = ["COMMAND_TYPES", "CommitFailed", "Engine", "EngineStopped", "now_micros"]

log = logging.getLogger("syncd.engine")

# ledgered only when applied, under deterministic ids: never deduplicated by the database
COMMAND_TYPES = frozenset(
    {
        EventType.HOLD_CREATE,
        EventType.HOLD_RELEASE,
        EventType.HOLD_COLLECT,
        EventType.HOLD_EXPIRE,
        EventType.RESERVATION_EXPIRE,
    }
)
SYSTEM_CONNECTOR = "syncd"
_APPLIED = Outcome.APPLIED.value
_OK = Outcome.APPLIED  # enum members read once (a class lookup is a descriptor call)
_ORDER = EventType.ORDER
_CHANNEL_LEVEL = EventType.CHANNEL_LEVEL
_SKU = itemgetter(1)  # of an outbox key (channel, sku, location)
_SLICE = 1000  # rows built at a time while SQLite writes the slice before (`repo.Queued`)
# seconds a source's acknowledgement callback (`Inbound.on_commit`, `on_failure`) may take: the
# writer awaits them in order (MQTT wants its PUBACKs in order), so one that hangs (a file move
# on a stuck mount) would stall every source, and a stop, for as long as it hangs
CALLBACK_TIMEOUT = 10.0


def now_micros() -> int:
    return time.time_ns() // 1000


class EngineStopped(RuntimeError):
    """The engine no longer takes events (shutting down)."""


@dataclass(slots=True)
class _Work:
    events: list[Event]
    dead: list[DeadLetter] = field(default_factory=list)
    future: asyncio.Future[list[Verdict]] | None = None
    inbound: Inbound | None = None


@dataclass(slots=True)
class _Committed:
    """A committed batch whose figures and acknowledgements are still owed (`Engine._finish`)."""

    works: list[_Work]
    verdicts: list[list[Verdict]]
    changes: Changes
    drift: dict[OKey, int]
    seqs: dict[tuple[str, str], int]
    counted: Counter[tuple[str, EventType, Outcome]]
    dead: list[DeadLetter]
    now: int


class Engine:
    def __init__(
        self,
        db: AsyncEngine,
        config: LedgerConfig,
        metrics: Metrics,
        *,
        max_batch: int = 2000,
        queue_size: int = 1000,
        sweep_every: float = 1.0,
        outbox_flush_every: float = 2.0,
        desired_flush_every: float = 10.0,
        level_checkpoint_every: float = 10.0,
        level_checkpoint_chunk: int = 5000,
        callback_timeout: float = CALLBACK_TIMEOUT,
        clock: Callable[[], int] = now_micros,
    ) -> None:
        self.db = db
        self.callback_timeout = callback_timeout
        self.ledger = Ledger(config)
        self.metrics = metrics
        self.outbox = Outbox(metrics)
        self.max_batch = max_batch
        self.sweep_every = sweep_every
        self.outbox_flush_every = outbox_flush_every
        self.desired_flush_every = desired_flush_every
        self._next_flush = 0.0
        self._next_desired_flush = 0.0
        self.clock = clock
        self.queue: asyncio.Queue[_Work] = asyncio.Queue(maxsize=queue_size)
        self.last_seq: dict[tuple[str, str], int] = {}
        self.oversold: set[tuple[str, str]] = set()
        self.hold_states: Counter[str] = Counter()
        self.reservation_listeners: list[Callable[[Reservation], None]] = []
        self.batches = 0  # progress counter (watchdog)
        self.db_ok = False
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._poke = asyncio.Event()
        self._next_sweep = 0.0
        self.figures = Figures(self.ledger)
        self.outbox.on_dirty = self._poke.set
        self.checkpoint = Checkpoint(level_checkpoint_every, level_checkpoint_chunk, 0.0)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the in-memory state from the database, recompute every figure, start."""
        horizon = self.ledger.config.tail_horizon
        async with self.db.connect() as conn:
            restored = await repo.restore_levels(conn, horizon=horizon)
            open_res = await repo.load_reservations(conn, open_only=True)
            rows = await repo.load_outbox(conn)
            self.last_seq = await repo.load_sources(conn)
            self.hold_states = await repo.count_holds(conn)
        levels = self.ledger.levels = restored.levels
        cp = self.checkpoint
        self.checkpoint = Checkpoint(cp.every, cp.chunk, asyncio.get_running_loop().time(),
                                     restored.rolled, restored.replay_from)
        if restored.rolled:
            log.info("re-applied the ledger after its checkpoint",
                     extra={"levels": len(restored.rolled)})
        for r in open_res:
            self.ledger.load_reservation(r)
        self.outbox = Outbox(self.metrics, rows)
        self.outbox.on_dirty = self._poke.set
        self.oversold = {k for k, lvl in levels.items() if lvl.on_hand < 0}
        self.db_ok = True
        await self._recompute_all()
        self._publish_gauges()
        self._accepting = True
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="syncd-engine")

    async def stop(self, within: float = 30.0) -> None:
        """Stop intake, commit what is queued (for at most `within` seconds: with the database
        down nothing more can be committed, and nothing uncommitted was acknowledged), let the
        writer task finish the commit it is in (the engine also commits on its own: expiries,
        the outbox flush), stop; only a task still busy when `within` runs out is cancelled.
        Then write the level checkpoint and the outbox rows still owed, in one transaction, for
        at most `within` seconds more, and if that fails the outbox rows alone, for as long
        again (both are rebuilt at the next start when they cannot be written). Each queued
        delivery refused meanwhile has its source's callback, which may take up to
        `callback_timeout` (the bundled connectors' return at once)."""
        self._accepting = False
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        self._poke.set()
        try:
            await asyncio.wait_for(self.queue.join(), within)
        except TimeoutError:
            log.error("stopping with %d deliveries uncommitted (not acknowledged; their sources "
                      "will deliver them again)", self.queue.qsize())
        else:  # drained: the task ends after its current batch
            self._stopping = True
            self._poke.set()
            # `wait` neither cancels the task on timeout nor raises what ended it
            await asyncio.wait({self._task}, timeout=max(0.0, deadline - loop.time()))
        self._task.cancel()  # cancelled, it still tells a committed batch's sources
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self.queue.empty():  # never taken: their sources hear now, not never
            await self._refuse([self.queue.get_nowait()], EngineStopped("syncd is stopping"))
            self.queue.task_done()
        if self._uncommitted:
            # memory holds the effects of a batch that was never committed: a checkpoint written
            # from it would count those events again when their sources deliver them again (the
            # outbox in memory changes only after a commit, so it is still written below)
            log.error("a batch was cut short by the stop: the level checkpoint is not written "
                      "(the next start re-applies the ledger after the last one)")
        else:
            try:
                await asyncio.wait_for(self._write_all(), within)
            except Exception as exc:  # the next start re-applies the ledger after the checkpoint
                log.error("could not write the level checkpoint at stop (the outbox rows are "
                          "written on their own): %s", brief(exc))
                self._unflush()  # the outbox rows are tried again on their own
        if self.outbox.dirty or self.outbox.moved:
            try:
                await asyncio.wait_for(self._persist_only(), within)
            except Exception as exc:  # the outbox is recomputed at the next start anyway
                log.error("could not persist the outbox at stop: %s", brief(exc))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def reconfigure(self, config: LedgerConfig) -> None:
        """Take a new configuration (SIGHUP); figures are recomputed by the next batch."""
        self.ledger.config = config
        self.figures.reindex()
        self._recompute_pending = True
        self._poke.set()

    _recompute_pending = False
    _uncommitted = False  # memory holds effects of a batch not committed (nor reloaded) yet
    _stopping = False  # `stop()` drained the queue: the writer task ends between batches
    _deferred: _Committed | None = None  # committed; its sources hear in the next batch

    # -- intake ---------------------------------------------------------------------------------

    async def submit(self, inbound: Inbound) -> None:
        """Queue a delivery; waits while the queue is full (back-pressure)."""
        if not self._accepting:
            raise EngineStopped("engine is not accepting events")
        await self.queue.put(_Work(inbound.events, inbound.dead, None, inbound))
        self.metrics.queue_depth.set(self.queue.qsize())

    async def apply(
        self, events: Sequence[Event], dead: Sequence[DeadLetter] = ()
    ) -> list[Verdict]:
        """Queue events and wait for their commit; returns one verdict per event."""
        if not self._accepting:
            raise EngineStopped("engine is not accepting events")
        fut: asyncio.Future[list[Verdict]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Work(list(events), list(dead), fut))
        return await fut

    # -- reading --------------------------------------------------------------------------------

    def stock(self, sku: str) -> dict[str, Any]:
        """The `/v1/stock/{sku}` view (`syncd.views.stock`)."""
        return views.stock(self.ledger, self.figures, self.outbox, sku, self.clock())

    async def reservation(self, res_id: str) -> Reservation | None:
        """A hold or order reservation, open (memory) or closed (database)."""
        r = self.ledger.reservations.get(res_id)
        if r is not None:
            return r
        async with self.db.connect() as conn:
            found = await repo.load_reservations(conn, ids=[res_id])
        return found[0] if found else None

    def available_by_location(self, sku: str) -> dict[str, int]:
        return views.available_by_location(self.ledger, sku, self.clock())

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:  # a committed batch whose sources were not told yet (a stop): tell them now
            await self._finish_deferred()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_sweep = loop.time() + self.sweep_every
        backoff = 0.05
        while True:
            if self._stopping and self.queue.empty():
                return
            works = await self._next_batch(loop)
            if self._stopping and not works:
                return
            taken = len(works)  # `_process` may add the sweep's work, which is not queued
            try:
                await self._process(works)
                backoff = 0.05
            except asyncio.CancelledError:  # a stop gave up waiting for this batch
                try:
                    await self._finish_deferred()  # the batch before this one did commit
                finally:
                    await self._abandon(works)
                raise
            except Exception as exc:
                try:
                    await self._finish_deferred()  # the batch before this one did commit
                except asyncio.CancelledError:
                    await self._abandon(works)
                    raise
                self.metrics.db_errors.inc()
                self.metrics.db_up.set(0)
                self.db_ok = False
                log.error("batch commit failed; nothing acknowledged: %s", brief(exc))
                await self._fail(works, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                for _ in range(taken):
                    self.queue.task_done()

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Work]:
        works: list[_Work] = []
        if self.queue.empty():
            timeout = max(0.0, self._next_sweep - loop.time())
            getter = asyncio.ensure_future(self.queue.get())
            poker = asyncio.ensure_future(self._poke.wait())
            try:
                await asyncio.wait(
                    {getter, poker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                poker.cancel()
                if not getter.done():
                    getter.cancel()
                # wait for both to settle; unlike a suppressed gather this lets a cancellation
                # of the engine task itself through (stop() must not hang)
                await asyncio.wait({getter, poker})
            if getter.done() and not getter.cancelled():
                works.append(getter.result())
        self._poke.clear()
        n = sum(len(w.events) for w in works)
        while n < self.max_batch:
            try:
                w = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            works.append(w)
            n += len(w.events)
        self.metrics.queue_depth.set(self.queue.qsize())
        return works

    async def _process(self, works: list[_Work]) -> None:
        started = time.perf_counter()
        now = self.clock()
        loop = asyncio.get_running_loop()
        changes = Changes()
        drift: dict[OKey, int] = {}  # channel-level reports that differ: key -> what it shows
        verdicts: list[list[Verdict]] = []
        kept: set[tuple[str, str]] = set()  # commands applied in this batch
        dead: list[DeadLetter] = [d for w in works for d in w.dead]
        unclaim: set[tuple[str, str]] = set()  # commands claimed here but not applied
        fixes: list[tuple[str, str | None, str, str]] = []
        counted: Counter[tuple[str, EventType, Outcome]] = Counter()
        seqs: dict[tuple[str, str], int] = {}
        last_seq = self.last_seq
        apply = self.ledger.apply

        sweep: list[Event] = []
        if loop.time() >= self._next_sweep:
            self._next_sweep = loop.time() + self.sweep_every
            sweep = self._due_expiries(now)
        if sweep:  # in the caller's list: a failed commit must reload what the sweep expired
            works.append(_Work(sweep))
        # until the commit (or `_fail`'s reload) memory runs ahead of the database; a batch with
        # no work (a flush) changes nothing there that a stop could write from
        self._uncommitted = bool(works)
        flush = loop.time() >= self._next_flush
        if flush:
            self._next_flush = loop.time() + self.outbox_flush_every
        flush_desired = flush and loop.time() >= self._next_desired_flush
        if flush_desired:
            self._next_desired_flush = loop.time() + self.desired_flush_every

        async with self.db.begin() as conn:
            # rule 1: claiming the ledger rows is the deduplication (unique connector+event_id).
            # Commands are claimed in the same insert so that the ledger's order is the order of
            # application (a replay must meet a hold before the sale that followed it); they are
            # judged by the reservation state, not by their row, and the rows of the commands
            # that were not applied are taken back below.
            claim: list[tuple[Any, ...]] = []
            seen: set[tuple[str, str]] = set()
            for w in works:
                for ev in w.events:
                    ident = (ev.connector, ev.event_id)
                    if ident not in seen:
                        seen.add(ident)
                        claim.append(repo.event_row(ev, now, _APPLIED, ""))
            claiming = await repo.submit_claim(conn, claim)
            try:
                if self._deferred is not None:
                    # the previous batch's figures and acknowledgements, while the database
                    # thread inserts this batch's ledger rows (its statements reach that thread
                    # at the first turn of the loop)
                    await asyncio.sleep(0)
                    await self._finish_deferred()
                fresh, first_id = await claiming
            except BaseException:
                await repo.settle([claiming])  # its statements end before the rollback
                raise
            await self._prefetch(conn, [ev for w in works for ev in w.events])
            for w in works:
                out: list[Verdict] = []
                for ev in w.events:
                    typ = ev.type
                    is_command = typ in COMMAND_TYPES
                    ident = (ev.connector, ev.event_id)
                    if not is_command and ident not in fresh:
                        v = Verdict(Outcome.DUPLICATE)
                        if typ is _ORDER:
                            v.reservation = self.ledger.reservations.get(res_id_of(ev))
                    else:
                        claimed = ident in fresh
                        fresh.discard(ident)  # a repeat later in this batch is a duplicate
                        if typ is _CHANNEL_LEVEL:
                            v = self._judge_drift(ev, drift)
                        elif typ is _ORDER and not self.ledger.knows(ev.sku):
                            v = self._unknown_sku(ev, dead)
                            if claimed:
                                unclaim.add(ident)
                        else:
                            v = apply(ev, now, changes)
                        if is_command:
                            if v.outcome is _OK:
                                kept.add(ident)
                            elif claimed:
                                unclaim.add(ident)
                        elif v.outcome is not _OK:
                            fixes.append((v.outcome.value, v.reason or None, *ident))
                    if ev.seq is not None and ev.source is not None:
                        skey = (ev.connector, ev.source)
                        if ev.seq > seqs.get(skey, last_seq.get(skey, -1)):
                            seqs[skey] = ev.seq
                    counted[(ev.connector, typ, v.outcome)] += 1
                    out.append(v)
                verdicts.append(out)

            await repo.set_outcomes(conn, fixes)
            await repo.unclaim_events(conn, unclaim - kept)
            if changes.levels:
                self.checkpoint.touch(changes.levels, first_id or await repo.next_event_id(conn))
            checkpointed = await self._write_checkpoint(conn, loop.time())
            await repo.upsert_reservations(
                conn, [repo.reservation_row(r) for r in changes.reservations.values()]
            )
            if flush:
                await self._write_outbox(conn, *self._outbox_keys(desired=flush_desired))
            await repo.insert_dead_letters(conn, [
                {"connector": d.connector, "origin": d.origin[:255], "reason": d.reason,
                 "payload": d.payload, "received_at": now}
                for d in dead
            ])
            await repo.upsert_sources(conn, [
                {"connector": c, "source": s, "last_seq": q, "updated_at": now}
                for (c, s), q in seqs.items()
            ])
        # committed: from here on, tell everyone
        self._uncommitted = False
        self.checkpoint.written(checkpointed)
        self._flushed = (set(), set())
        self.metrics.batch_apply.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(sum(len(w.events) for w in works))
        done = _Committed(works, verdicts, changes, drift, seqs, counted, dead, now)
        if self._stopping or self.queue.empty():
            await self._finish(done)
        else:  # finished while the next batch's ledger rows go in (`_process`)
            self._deferred = done

    async def _finish_deferred(self) -> None:
        done, self._deferred = self._deferred, None
        if done is not None:
            await self._finish(done)

    async def _finish(self, done: _Committed) -> None:
        """After a batch's commit: publish its figures, wake the pushers, tell its sources.
        The batch is committed whatever happens here: a failure (a bug) is logged, every
        figure is recomputed with the next batch, and its sources are told all the same."""
        works = done.works
        try:
            self._after_commit(done.changes, done.drift, done.seqs, done.counted, done.dead,
                               done.now)
        except Exception:
            log.exception("after the commit of a batch; its sources are told all the same")
            self._recompute_pending = True
        for w, out in zip(works, done.verdicts, strict=False):
            if w.future is not None and not w.future.done():
                w.future.set_result(out)
        self.batches += 1
        if not self.db_ok:
            log.info("database writes succeed again")
        self.db_ok = True
        self.metrics.db_up.set(1)
        for w in works:
            if w.inbound is not None and w.inbound.on_commit is not None:
                await _call(self.callback_timeout, w.inbound.on_commit)

    async def _write_checkpoint(self, conn: Any, now: float) -> int:
        """Write the level rows that are due (see `syncd.checkpoint`) and the replay mark, in
        the caller's transaction; returns how many keys to mark written after its commit."""
        cp = self.checkpoint
        due = cp.due(now)
        if not due:
            return 0
        next_id = await repo.next_event_id(conn)
        async with repo.Queued(conn) as queued:  # each slice written while the next is built
            await self._queue_levels(conn, due, next_id - 1, queued)
        await repo.set_replay_from(conn, cp.replay_from(len(due), next_id))
        return len(due)

    async def _queue_levels(self, conn: Any, keys: list[tuple[str, str]], as_of: int,
                            queued: repo.Queued) -> None:
        """Queue the level rows of `keys` (as of event `as_of`), a slice at a time."""
        levels = self.ledger.levels
        for i in range(0, len(keys), _SLICE):
            await repo.upsert_levels(conn, [
                repo.level_row(key[0], key[1], lvl, as_of)
                for key in keys[i : i + _SLICE] if (lvl := levels.get(key)) is not None
            ], queued)

    async def _write_all(self) -> None:
        """At stop: every lagging level row and every outbox row still owed, in one
        transaction, and the mark past the ledger's end (it may still be a conservative one
        left by a kill): one pipeline of slices, each written while the next is built, rather
        than a pipeline filled and drained in every transaction. The outbox's keys are sorted
        while SQLite writes the level slices, and the whole rows go in after the pipeline."""
        keys = self.checkpoint.rest()
        async with self.db.begin() as conn:
            next_id = await repo.next_event_id(conn)
            async with repo.Queued(conn) as queued:
                await self._queue_levels(conn, keys, next_id - 1, queued)
                whole, desired = self._outbox_keys()
                await self._queue_desired(conn, desired, queued)
            await self._write_whole(conn, whole)
            await repo.set_replay_from(conn, next_id)  # every row is current: none replayed
        self.checkpoint.clear()
        self._flushed = (set(), set())

    async def _prefetch(self, conn: Any, evs: Iterable[Event]) -> None:
        """Load the closed reservations that this batch's commands name (idempotency)."""
        wanted = [
            rid for ev in evs
            if (ev.type in COMMAND_TYPES or ev.type is EventType.ORDER)
            and (rid := res_id_of(ev)) and rid not in self.ledger.reservations
        ]
        if wanted:
            for r in await repo.load_reservations(conn, ids=wanted):
                self.ledger.load_reservation(r)

    def _unknown_sku(self, ev: Event, dead: list[DeadLetter]) -> Verdict:
        """An order line for a SKU that no location has ever reported is dead-lettered, not
        reserved: it is a catalogue mismatch (a SKU renamed on the channel, a typo, a product
        syncd does not manage), and a reservation of it would hold nothing real while its
        figure fails on every channel. The dead letter keeps the line for a replay once the
        SKU is counted somewhere."""
        reason = f"unknown SKU {ev.sku[:200]!r}: no location has reported it"
        line = {"event_id": ev.event_id, "type": ev.type.value, "sku": ev.sku, "qty": ev.qty,
                "channel": ev.channel, "order_id": ev.order_id, "occurred_at": ev.occurred_at}
        dead.append(DeadLetter(ev.connector, reason, json.dumps(line).encode(),
                               f"order {ev.order_id or ''}"))
        return Verdict(Outcome.REJECTED, reason)

    def _judge_drift(self, ev: Event, drift: dict[OKey, int]) -> Verdict:
        channel = ev.channel or ""
        key = (channel, ev.sku, ev.remote_location or "")
        drifted = self.outbox.is_drift(key, ev.qty)
        if drifted is None:
            return Verdict(Outcome.IGNORED, "SKU not published on this channel")
        if drifted:
            drift[key] = ev.qty
            return Verdict(Outcome.DRIFT, f"channel shows {ev.qty}")
        return Verdict(Outcome.APPLIED)

    def _publish_figures(self, changes: Changes, now: int) -> set[str]:
        """Recompute the figures a committed batch moved into the outbox (every figure after a
        reconfiguration); returns the channels with new work. Done after the commit, from the
        state it made durable (the next batch's rules have not run yet: `_finish`), so a pusher
        never sees an uncommitted value."""
        moved: Mapping[tuple[str, str], Level | None] = changes.levels
        levels = self.ledger.levels
        if self._recompute_pending:  # every level, and the reserved keys that have none
            self._recompute_pending = False
            bare = [key for r in changes.reservations.values()
                    if (key := (r.sku, r.location)) not in levels]
            moved = {**levels, **dict.fromkeys(bare)} if bare else levels
        elif changes.reservations:
            more: dict[tuple[str, str], Level | None] = dict(changes.levels)
            for r in changes.reservations.values():
                key = (r.sku, r.location)
                lvl = levels.get(key)
                if lvl is not None and lvl.key is not None:
                    key = lvl.key
                more.setdefault(key, lvl)
            moved = more
        return self.outbox.publish(self.figures.moved(moved, now), now)

    def _outbox_keys(self, desired: bool = True) -> tuple[list[OKey], list[OKey]]:
        """The outbox rows changed since the last flush, to write (`_write_outbox`): whole
        rows where the pushed side changed or a pusher took the row, and with `desired` the
        desired side of the others.

        The pushed side says what each channel was last given: it is written every
        `outbox_flush_every` seconds (a crash before that costs pushes made again), and so is a
        row being pushed (`Outbox.take`). The desired side is derived state (recomputed from the
        ledger at every start; a crash loses nothing), written every `desired_flush_every`
        seconds, as the level checkpoint rotates: the longer the interval, the more moves of one
        figure a write covers (docs/decisions.md)."""
        whole, moved = self._flushed = self.outbox.take_unwritten(desired)
        # by SKU, the middle of the key: neighbouring rows share B-tree pages (SQLite: half the
        # time per row), and one string compares 2.5 times faster than the key tuple
        return sorted(whole, key=_SKU), sorted(moved, key=_SKU)

    async def _write_outbox(self, conn: Any, whole: list[OKey], desired: list[OKey]) -> None:
        """Write whole rows (`repo.outbox_row`) and desired sides (`repo.outbox_desired_row`),
        each slice of the latter written while the next one is built. Only the engine changes
        a desired side, so a pusher that runs meanwhile changes none of them."""
        await self._write_whole(conn, whole)
        async with repo.Queued(conn) as queued:
            await self._queue_desired(conn, desired, queued)

    async def _write_whole(self, conn: Any, whole: list[OKey]) -> None:
        rows = self.outbox.rows
        await repo.upsert_outbox(conn, [repo.outbox_row(key, rows[key]) for key in whole])

    async def _queue_desired(self, conn: Any, desired: list[OKey], queued: repo.Queued) -> None:
        """Queue the desired sides of `desired`, a slice at a time."""
        rows = self.outbox.rows
        for i in range(0, len(desired), _SLICE):
            await repo.upsert_outbox_desired(conn, [
                repo.outbox_desired_row(key, rows[key]) for key in desired[i : i + _SLICE]
            ], queued)

    # the (whole, desired-side) keys of the last flush, put back if its commit fails
    _flushed: tuple[set[OKey], set[OKey]] = (set(), set())

    def _unflush(self) -> None:
        """The flush's commit did not happen: its keys are written next time."""
        self.outbox.put_back(*self._flushed)
        self._flushed = (set(), set())

    def _after_commit(
        self,
        changes: Changes,
        drift: dict[OKey, int],
        seqs: dict[tuple[str, str], int],
        counted: Counter[tuple[str, EventType, Outcome]],
        dead: list[DeadLetter],
        now: int,
    ) -> None:
        ob = self.outbox
        try:
            channels = self._publish_figures(changes, now)
        except Exception:  # a bug: the batch is committed all the same, and its sources must hear
            log.exception("the figures of a committed batch could not be computed; every figure "
                          "is recomputed with the next batch")
            self._recompute_pending = True
            channels = set(ob.pending)  # what `publish` may have moved before it failed
        for key, shown in drift.items():
            ob.force_repush(key, shown, now)
            self.metrics.drift.labels(key[0]).inc()
            channels.add(key[0])
        ob.notify(channels)
        self.last_seq.update(seqs)
        for (connector, typ, outcome), n in counted.items():
            self.metrics.events.labels(connector, typ.value, outcome.value).inc(n)
        for d in dead:
            self.metrics.dead_letters.labels(d.connector).inc()
        # a level goes below zero only in an event of the batch (`changes.oversold`); one that
        # was below zero may have come back (a count, a receipt)
        levels, oversold = self.ledger.levels, self.oversold
        for lkey in changes.oversold:
            lvl = levels[lkey]
            if lvl.on_hand < 0 and lkey not in oversold:
                oversold.add(lkey)
                log.warning("oversold: on-hand below zero, published as 0",
                            extra={"location": lkey[1], "on_hand": lvl.on_hand})
        if oversold:
            back = [k for k in (oversold & changes.levels.keys()) if levels[k].on_hand >= 0]
            oversold.difference_update(back)
        for kind, old, new in changes.transitions:
            if kind == "hold":
                if old is not None:
                    self.hold_states[old] -= 1
                self.hold_states[new] += 1
                if new == "expired":
                    self.metrics.holds_expired.inc()
        for r in changes.reservations.values():
            for listener in self.reservation_listeners:
                try:
                    listener(r)
                except Exception:
                    log.exception("reservation listener failed")
            if r.state not in OPEN_STATES:
                self.ledger.reservations.pop(r.res_id, None)
        self._publish_gauges()

    def _publish_gauges(self) -> None:
        self.metrics.oversold.set(len(self.oversold))
        self.metrics.levels_lagging.set(self.checkpoint.lagging)
        for state in ("held", "collected", "released", "expired"):
            self.metrics.holds.labels(state).set(self.hold_states.get(state, 0))
        for ch in self.ledger.config.channels:
            self.metrics.outbox_pending.labels(ch).set(self.outbox.pending_count(ch))

    def _due_expiries(self, now: int) -> list[Event]:
        out = []
        for typ, r in list(self.ledger.due_expiries(now)):
            out.append(Event(
                connector=SYSTEM_CONNECTOR, event_id=f"{r.res_id}:expire", type=typ,
                sku=r.sku, qty=r.qty, occurred_at=now, location=r.location, hold_id=r.res_id,
            ))
        return out

    async def _recompute_all(self) -> None:
        """Recompute every channel figure from the ledger (start, reload) and persist it."""
        self._recompute_pending = True
        self._after_commit(Changes(), {}, {}, Counter(), [], self.clock())
        await self._persist_only()

    async def _persist_only(self) -> None:
        whole, desired = self._outbox_keys()
        for i in range(0, max(len(whole), len(desired)), 20_000):
            async with self.db.begin() as conn:
                await self._write_outbox(conn, whole[i : i + 20_000], desired[i : i + 20_000])

    # -- failure --------------------------------------------------------------------------------

    async def _refuse(self, works: list[_Work], exc: BaseException) -> None:
        """Tell the sources of uncommitted works at once (503, no PUBACK, file left in place)."""
        for w in works:
            if w.future is not None and not w.future.done():
                w.future.set_exception(CommitFailed(exc))
            if w.inbound is not None and w.inbound.on_failure is not None:
                await _call(self.callback_timeout, w.inbound.on_failure, exc)

    async def _abandon(self, works: list[_Work]) -> None:
        """The engine was cancelled in the middle of a batch (a stop that gave up waiting):
        keep the outbox rows its flush had taken, and refuse its works if it did not commit.
        Memory is not reloaded; if the batch had work, `stop()` then writes no level checkpoint
        from it (a batch with none, a flush, left memory as committed)."""
        self._unflush()
        if self._uncommitted:
            await self._refuse(works, EngineStopped("stopped before the batch was committed"))

    async def _fail(self, works: list[_Work], exc: BaseException) -> None:
        """Nothing of the batch is committed: tell the waiting sources at once (503, no PUBACK),
        then reload what the batch touched from the database (retried until it answers)."""
        self._unflush()
        await self._refuse(works, exc)
        keys, res_ids = recovery.touched((ev for w in works for ev in w.events), self.ledger)
        await recovery.reload(self.db, self.ledger, keys, res_ids)
        self._uncommitted = False


class CommitFailed(RuntimeError):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"could not commit: {brief(cause)}")
        self.cause = cause


async def _call(seconds: float, fn: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Run a source's callback; one that is a coroutine gets `seconds`, then it is
    cancelled and the writer goes on (its events are committed: a source that was not told
    delivers them again, and they count once).

    Not `asyncio.timeout`: a stop that gave up runs the callbacks of a committed batch in a
    task that is being cancelled, where before Python 3.11.3 (Debian 12 has 3.11.2) an expired
    `asyncio.timeout` raises `CancelledError`, not `TimeoutError`, and the batch's other
    sources would not be told."""
    try:
        result = fn(*args)
        if not inspect.isawaitable(result):
            return
        running = asyncio.ensure_future(result)
        try:
            await asyncio.wait({running}, timeout=seconds)
        finally:
            if not running.done():  # it hangs, or the writer is being cancelled
                running.cancel()
                running.add_done_callback(_retrieve)
        if not running.done():
            log.error("an acknowledgement callback did not return within %g s; given up (a "
                      "source that was not told delivers again, and its events count once)",
                      seconds)
            return
        if running.cancelled():  # by itself: nothing to wait for, and the writer goes on
            log.error("an acknowledgement callback was cancelled")
            return
        running.result()
    except Exception:
        log.exception("acknowledgement callback failed")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback of a callback given up: its outcome is of no use, but must be retrieved."""
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        log.error("an acknowledgement callback given up ended with %s", brief(exc))
