"""Pushers: one per channel, draining the outbox into the channel's connector.

A pusher takes up to the connector's `max_batch` due items, pushes them, and records each result:

- `ok` / `accepted`: the row is settled at that version (a newer version stays pending);
- `conflict` (compare-and-set lost): the channel's quantity becomes `remote`, drift is counted and
  the item is pushed again at once with the new `remote` (a few times, then with backoff);
- `transient`: the item is retried later with exponential backoff and jitter;
- `permanent`: recorded with its reason; it does not block other SKUs and is retried only when a
  new desired value comes.

A whole call that fails transiently (`TransientPushError`: 5xx, timeout, throttled) is retried by
tenacity with exponential backoff and jitter, honouring the channel's `retry_after`. Each retry
pushes the *latest* desired values of the same keys, with idempotency keys that change only when
the version does (`outbox.idempotency_key`: a version number reused after a crash for another
value gets another key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never
from tenacity.wait import wait_random_exponential

from connectors.base import (
    Connector,
    PermanentPushError,
    PushItem,
    PushResult,
    PushStatus,
    TransientPushError,
)

from .metrics import Metrics
from .outbox import Outbox

__all__ = ["Pusher"]

log = logging.getLogger("syncd.push")

CONFLICT_RETRIES = 3


class _Wait:
    """Exponential backoff with full jitter, never shorter than the channel's Retry-After."""

    def __init__(self, multiplier: float, maximum: float) -> None:
        self._exp = wait_random_exponential(multiplier=multiplier, max=maximum)

    def __call__(self, state: RetryCallState) -> float:
        base = float(self._exp(state))
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientPushError) and exc.retry_after is not None:
            return max(base, exc.retry_after)
        return base


class Pusher:
    def __init__(
        self,
        channel: str,
        connector: Connector,
        outbox: Outbox,
        metrics: Metrics,
        clock: Callable[[], int],
        *,
        backoff: float = 0.25,
        max_backoff: float = 60.0,
        reconcile_every: float | None = None,
    ) -> None:
        self.channel = channel
        self.connector = connector
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.reconcile_every = reconcile_every
        self.calls = 0
        self.retries = 0
        self._task: asyncio.Task[None] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pusher-{self.channel}")
        if self.reconcile_every:
            self._reconciler = asyncio.create_task(
                self._reconcile_loop(self.reconcile_every), name=f"reconcile-{self.channel}"
            )

    async def stop(self) -> None:
        for task in (self._task, self._reconciler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reconciler = None

    async def flush(self, within: float) -> bool:
        """Wait until nothing is due for this channel (shutdown). True when drained."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            items, _later = self.outbox.take(self.channel, 1, self.clock())
            if not items:
                return True
            self.outbox.wake_event(self.channel).set()
            await asyncio.sleep(0.02)
        return False

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        wake = self.outbox.wake_event(self.channel)
        later: int | None = None
        while True:
            timeout = None if later is None else max(0.0, (later - self.clock()) / 1e6)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            wake.clear()
            while True:
                items, later = self.outbox.take(self.channel, self.connector.max_batch,
                                                self.clock())
                self.metrics.outbox_pending.labels(self.channel).set(
                    self.outbox.pending_count(self.channel))
                if not items:
                    break
                try:
                    await self._push(items)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("pusher error", extra={"channel": self.channel})
                    await asyncio.sleep(self.backoff)

    async def _push(self, items: list[PushItem]) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientPushError),
            wait=_Wait(self.backoff, self.max_backoff),
            stop=stop_never,
            reraise=True,
            before_sleep=self._before_sleep,
        )
        results: Sequence[PushResult] = ()
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        items = self.outbox.refresh(items)  # push the latest values
                        if not items:
                            return
                    self.calls += 1
                    results = await self.connector.push(self.channel, items)
        except PermanentPushError as exc:
            results = [PushResult(it.sku, it.location, PushStatus.PERMANENT, reason=exc.reason)
                       for it in items]
        self._record(items, results)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        self.metrics.push.labels(self.channel, "retry").inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("push failed, retrying: %s", getattr(exc, "reason", exc),
                    extra={"channel": self.channel})

    def _record(self, items: list[PushItem], results: Sequence[PushResult]) -> None:
        by_key = {(r.sku, r.location): r for r in results}
        now = self.clock()
        ob = self.outbox
        for it in items:
            res = by_key.get((it.sku, it.location))
            row = ob.rows[(it.channel, it.sku, it.location)]
            status = res.status if res is not None else PushStatus.TRANSIENT
            reason = res.reason if res is not None else "no result for this item"
            self.metrics.push.labels(self.channel, status.value).inc()
            if status in (PushStatus.OK, PushStatus.ACCEPTED):
                self.metrics.push_lag.labels(self.channel).observe(
                    max(0.0, (now - row.committed_at) / 1e6))
                ob.settle(it, state=status.value, pushed=it.desired, remote=it.desired,
                          error=None)
            elif status is PushStatus.PERMANENT:
                log.warning("push refused: %s", reason, extra={"channel": self.channel})
                ob.settle(it, state="failed", pushed=None, remote=None, error=reason)
            elif status is PushStatus.CONFLICT:
                self.metrics.drift.labels(self.channel).inc()
                delay = 0 if row.attempts < CONFLICT_RETRIES else self._delay(row.attempts)
                ob.settle(it, state="conflict", pushed=None,
                          remote=res.remote if res is not None else None,
                          error=reason or "compare-and-set conflict", retry_at=now + delay)
            else:
                ob.settle(it, state="transient", pushed=None, remote=None, error=reason,
                          retry_at=now + self._delay(row.attempts + 1))

    def _delay(self, attempts: int) -> int:
        """Per-item backoff in microseconds: exponential with full jitter."""
        cap = min(self.max_backoff, self.backoff * (2 ** min(attempts, 20)))
        return int(random.uniform(0, cap) * 1e6) + 1

    # -- reconciliation -------------------------------------------------------------------------

    async def _reconcile_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.reconcile()
            except NotImplementedError:
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconciliation failed: %s", exc, extra={"channel": self.channel})

    async def reconcile(self) -> int:
        """Read what the channel shows and push again wherever it drifted. Returns the drift."""
        ob = self.outbox
        keys = [(sku, loc) for (ch, sku, loc), row in ob.rows.items()
                if ch == self.channel and not row.pending]
        drifted = 0
        step = max(1, self.connector.max_batch)
        for i in range(0, len(keys), step):
            chunk = keys[i : i + step]
            shown = await self.connector.read_levels(self.channel, chunk)
            for (sku, loc), qty in shown.items():
                key = (self.channel, sku, loc)
                row = ob.rows.get(key)
                if row is None or row.pending or qty == row.desired:
                    continue
                drifted += 1
                self.metrics.drift.labels(self.channel).inc()
                ob.force_repush(key, qty, self.clock())
        if drifted:
            ob.on_dirty()
            ob.notify([self.channel])
            log.info("reconciliation corrected %d quantities", drifted,
                     extra={"channel": self.channel})
        return drifted
