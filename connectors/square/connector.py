"""The Square connector: a Square POS as the stock authority of its store locations.

A Square seller's stock is per *item variation* (a catalog object id) and Square location. syncd
keys stock by SKU and syncd location, so the connector keeps two maps: `locations` from the
configuration (Square location id → syncd location; a Square location not in it is not syncd's
business) and a catalog cache (variation id → SKU, `item_variation_data.sku`).

Inbound only; syncd pushes nothing to Square here (`push` refuses: a Square POS is a source).

- **Webhooks** (`inventory.count.updated`): verified (`mapping.verify_signature`, 401 when wrong),
  parsed (400 when not a JSON object), and each `IN_STOCK` count of a mapped location becomes a
  COUNT event, as of its `calculated_at`, with `event_id = "{event_id}:{variation}:{location}"`.
  A variation missing from the cache is looked up with BatchRetrieveCatalogObjects (bounded in
  time: Square wants its answer within 10 s). Square does not know it: dead letter "unknown
  catalog object". The lookup failed (Square unreachable): 503, so that Square delivers it again
  (and the next poll reads the count anyway). A variation without a SKU is skipped: syncd does
  not stock it. A fractional or malformed count is dead-lettered; the others of the notification
  still apply.
- **Polling** reconciles what webhooks missed (syncd down, a delivery lost): every `poll_every`,
  BatchRetrieveInventoryCounts of the mapped locations, `IN_STOCK`, `updated_after` = the newest
  `calculated_at` the previous poll saw, less `POLL_OVERLAP` (nothing is persisted: the first
  poll after a start reads every count). One `Inbound` per page, through `events()`. Event ids
  derive from the count state (`poll:{variation}:{location}:{calculated_at}`): the same state
  read again is a duplicate, an older one is stale against a newer count already applied. The
  high-water mark moves only when every page of the poll is committed; a poll that fails or
  whose commit fails is read again whole next time. 429/5xx are retried with exponential backoff
  and jitter (`client.py`); a poll that still fails is logged and the loop keeps going.
- The catalog cache is filled by paging ListCatalog (`types=ITEM_VARIATION`) before the first
  poll and refreshed every `CATALOG_REFRESH` (SKU edits, deleted variations). A SKU carried by
  several variations is ambiguous: its counts are dead-lettered rather than letting two
  variations overwrite each other's stock.

`connected` is true once a poll succeeded, false after one failed. `poll_once()` runs one poll now
and returns when its pages are committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._http import HttpConnector, service_url
from connectors.base import (
    ConnectorContext,
    DeadLetter,
    Inbound,
    PermanentPushError,
    PushItem,
    PushResult,
    WebhookReply,
)
from syncd.config import PositiveDuration, Secret
from syncd.model import Event

from . import mapping
from .client import PAGE_LIMIT, SquareClient, SquareError

__all__ = ["PollResult", "SquareConfig", "SquareConnector"]

log = logging.getLogger("connectors.square")

_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
LOOKUP_TIMEOUT = 4.0  # a webhook waits at most this long for a catalog lookup
POLL_OVERLAP = 5.0  # seconds re-read before the previous poll's newest count
CATALOG_REFRESH = 3600.0  # full catalog re-read, seconds
COMMIT_WAIT = 300.0  # a poll waits this long for its pages to be committed
_QUEUE_PAGES = 4  # pages read ahead of the engine


class SquareConfig(BaseModel):
    """`[connectors.<name>]` with `type = "square"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the API root; plain http only for a loopback simulator
    base_url: str = "https://connect.squareup.com"
    access_token: Secret  # sent as `Authorization: Bearer ...`
    webhook_signature_key: Secret  # the subscription's signature key
    # the notification URL exactly as entered on the Square webhook subscription: it is part of
    # what Square signs (syncd may sit behind a proxy, so it is not derived from the request)
    notification_url: str
    # Square location id -> syncd location
    locations: Annotated[dict[str, str], Field(min_length=1)]
    square_version: str = "2026-01-22"  # the `Square-Version` header
    poll_every: PositiveDuration = 300.0
    timeout: PositiveDuration = 10.0

    @field_validator("base_url")
    @classmethod
    def _check_base(cls, value: str) -> str:
        return service_url(value, "base_url", "https://connect.squareup.com")

    @field_validator("notification_url")
    @classmethod
    def _check_notification(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("expected the URL of the Square webhook subscription "
                             "(https://...)")
        if value != value.strip() or any(c.isspace() for c in value):
            raise ValueError("notification_url must not contain spaces: it is signed byte "
                             "for byte")
        return value

    @field_validator("locations")
    @classmethod
    def _check_locations(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for square_id, loc in value.items():
            if not square_id.strip() or not loc.strip():
                raise ValueError("location ids and names must not be empty")
            if loc in seen:
                raise ValueError(f"Square locations {seen[loc]!r} and {square_id!r} both map to "
                                 f"{loc!r}: their counts would overwrite each other")
            seen[loc] = square_id
        return value

    @field_validator("square_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _VERSION.fullmatch(value):
            raise ValueError('expected a Square API version like "2026-01-22"')
        return value


@dataclass(slots=True)
class PollResult:
    """What one poll did (tests, logs)."""

    pages: int = 0
    counts: int = 0  # counts Square returned
    events: int = 0
    dead: int = 0
    skipped: int = 0  # not IN_STOCK, unmapped location, variation without a SKU, already read
    committed: bool = False  # every page committed and the high-water mark moved
    error: str = ""


class SquareConnector(HttpConnector):
    config_model: ClassVar[type[BaseModel]] = SquareConfig
    max_batch = 1  # it serves no channel

    def __init__(self, name: str, config: SquareConfig, context: ConnectorContext, *,
                 autopoll: bool = True) -> None:
        super().__init__(name, context)
        self.config = config
        self.autopoll = autopoll  # tests drive `poll_once()` themselves
        self.page_limit = PAGE_LIMIT
        self.client = SquareClient(self._session, config.base_url, config.access_token,
                                   config.square_version, config.timeout)
        self._key = config.webhook_signature_key.get_secret_value().encode()
        self._skus: dict[str, str | None] = {}  # variation id -> SKU (None: has no SKU)
        self._owners: dict[str, set[str]] = {}  # SKU -> variation ids carrying it
        self._warned: set[str] = set()
        self._catalog_at: float | None = None  # monotonic time of the last full listing
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=_QUEUE_PAGES)
        self._handover: collections.deque[Inbound] = collections.deque()
        self._poll_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._ok = False
        self._hwm: int | None = None  # newest calculated_at committed from polls, µs
        self._recent: dict[str, int] = {}  # poll event id -> calculated_at, overlap window
        self.polls = 0
        self._extra = {"connector": name}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the poll loop. Readiness (`connected`) follows the first successful poll."""
        await super().start()
        for square_id, loc in self.config.locations.items():
            known = self.context.locations.get(loc)
            if known is None:
                log.error("Square location %s maps to %r, which is not a syncd location",
                          square_id, loc, extra=self._extra)
            elif known.authority != self.name:
                log.warning("Square location %s maps to %r, whose authority is %r: its counts "
                            "will be ignored", square_id, loc, known.authority,
                            extra=self._extra)
        if self.autopoll and self._poller is None:
            self._poller = asyncio.create_task(self._poll_loop(), name=f"square-poll-{self.name}")

    async def close(self) -> None:
        self._closed.set()
        self._started = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await super().close()

    @property
    def connected(self) -> bool:
        return self._started and self._ok

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        raise PermanentPushError("square is a stock source here; it serves no channel")

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        raise NotImplementedError("square serves no channel")

    async def events(self) -> AsyncIterator[Inbound]:
        """The pages of polls, one `Inbound` each, until `close()`. A page taken off the queue
        by a consumer that went away before it was handed over is handed to the next one."""
        closed = asyncio.ensure_future(self._closed.wait())
        getter: asyncio.Future[Inbound] | None = None
        try:
            while not self._closed.is_set():
                if self._handover:
                    yield self._handover.popleft()
                    continue
                getter = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    return
                inbound, getter = getter.result(), None
                yield inbound
        finally:
            closed.cancel()
            if getter is not None:
                if getter.done() and not getter.cancelled():
                    self._handover.append(getter.result())
                else:
                    getter.cancel()

    # -- catalog --------------------------------------------------------------------------------

    def _remember(self, obj: Mapping[str, Any], into: dict[str, str | None]) -> None:
        oid = obj.get("id")
        if obj.get("type") != mapping.ITEM_VARIATION or not isinstance(oid, str) or \
                obj.get("is_deleted") is True:
            return
        data = obj.get("item_variation_data")
        into[oid] = mapping.usable_sku(data.get("sku")) if isinstance(data, dict) else None

    def _index(self) -> None:
        owners: dict[str, set[str]] = {}
        for oid, sku in self._skus.items():
            if sku is not None:
                owners.setdefault(sku, set()).add(oid)
        self._owners = owners

    async def _load_catalog(self) -> None:
        """Page the whole catalog's variations (ListCatalog) and replace the cache."""
        fresh: dict[str, str | None] = {}
        async for page in self.client.list_variations():
            for obj in page:
                self._remember(obj, fresh)
        self._skus = fresh
        self._index()
        self._catalog_at = time.monotonic()
        log.info("Square catalog read: %d item variations, %d with a SKU", len(fresh),
                 sum(1 for s in fresh.values() if s is not None), extra=self._extra)

    async def _lookup(self, ids: Iterable[str]) -> None:
        """Learn the variations of `ids` not in the cache (BatchRetrieveCatalogObjects)."""
        unknown = sorted({i for i in ids if i not in self._skus})
        if not unknown:
            return
        found: dict[str, str | None] = {}
        for obj in await self.client.retrieve_objects(unknown):
            self._remember(obj, found)
        if found:
            self._skus.update(found)
            self._index()

    def _sku(self, oid: str) -> tuple[str | None, str]:
        """(SKU, "") or (None, dead-letter reason) or (None, "") when it has no SKU."""
        if oid not in self._skus:
            return None, f"unknown catalog object {oid}"
        sku = self._skus[oid]
        if sku is None:
            return None, ""
        owners = self._owners.get(sku, set())
        if len(owners) > 1:
            if sku not in self._warned:
                self._warned.add(sku)
                log.warning("SKU %r is on %d Square item variations; its counts are set aside",
                            sku, len(owners), extra=self._extra)
            return None, f"SKU {sku} is on several catalog objects: {', '.join(sorted(owners))}"
        return sku, ""

    # -- webhooks -------------------------------------------------------------------------------

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        lowered = {k.lower(): v for k, v in headers.items()
                   if isinstance(k, str) and isinstance(v, str)}
        if not mapping.verify_signature(self._key, self.config.notification_url, body,
                                        lowered.get(mapping.SIGNATURE_HEADER)):
            return WebhookReply(401, error="bad_signature",
                                detail="x-square-hmacsha256-signature does not match the "
                                       "notification URL and body")
        payload = mapping.parse_body(body)
        if payload is None:
            return WebhookReply(400, error="malformed", detail="the body is not a JSON object")
        if payload.get("type") != mapping.COUNT_UPDATED:
            return WebhookReply(200)  # acknowledged, not ours to act on
        origin = f"webhook {mapping.COUNT_UPDATED}"

        def dead_letter(reason: str) -> DeadLetter:
            return DeadLetter(self.name, reason[:500], body, origin)

        try:
            event_id = mapping.notification_id(payload)
            entries = mapping.inventory_counts(payload)
        except mapping.MappingError as exc:
            return WebhookReply(200, dead=[dead_letter(str(exc))])
        dead: list[DeadLetter] = []
        kept: list[tuple[str, str, str, int, int]] = []  # oid, square loc, loc, qty, at
        for entry in entries:
            try:
                count = mapping.read_count(entry)
                if not count.in_stock_variation:
                    continue
                square_loc = count.location_id
                loc = self.config.locations.get(square_loc) if isinstance(square_loc, str) \
                    else None
                if loc is None or not isinstance(square_loc, str):
                    log.debug("count at unmapped Square location %r ignored", square_loc,
                              extra=self._extra)
                    continue
                oid = mapping.catalog_id(count.catalog_object_id)
                qty = mapping.parse_quantity(count.quantity)
                at = mapping.parse_time(count.calculated_at)
            except mapping.MappingError as exc:
                dead.append(dead_letter(str(exc)))
                continue
            kept.append((oid, square_loc, loc, qty, at))
        if any(oid not in self._skus for oid, *_ in kept):
            try:
                await asyncio.wait_for(self._lookup(oid for oid, *_ in kept), LOOKUP_TIMEOUT)
            except (SquareError, TimeoutError) as exc:
                log.warning("catalog lookup failed, asking Square to deliver again: %s", exc,
                            extra=self._extra)
                return WebhookReply(503, error="catalog_unavailable",
                                    detail="cannot look up a catalog object on Square now")
        events: list[Event] = []
        for oid, square_loc, loc, qty, at in kept:
            sku, reason = self._sku(oid)
            if sku is None:
                if reason:
                    dead.append(dead_letter(reason))
                continue
            events.append(mapping.count_event(
                self.name, mapping.webhook_event_id(event_id, oid, square_loc), sku, loc, qty,
                at, square_loc))
        return WebhookReply(200, events=events, dead=dead)

    # -- polling --------------------------------------------------------------------------------

    async def poll_once(self) -> PollResult:
        """Read the counts changed since the last poll; returns once its pages are committed
        (someone must be draining `events()`)."""
        async with self._poll_lock:
            return await self._poll()

    async def _poll_loop(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                result = await self.poll_once()
                failures = failures + 1 if result.error else 0
            except Exception as exc:  # never let the loop die
                failures += 1
                self._ok = False
                log.error("Square poll failed: %s", exc, extra=self._extra)
            wait = self.config.poll_every
            if failures:
                wait = min(wait, self.client.backoff(failures + 2))
            await self._idle(wait)

    async def _poll(self) -> PollResult:
        result = PollResult()
        self.polls += 1
        since = self._hwm
        updated_after = (mapping.rfc3339(since - int(POLL_OVERLAP * 1_000_000))
                         if since is not None else None)
        newest = since
        recent: dict[str, int] = {}
        commits: list[asyncio.Future[None]] = []
        try:
            if self._catalog_at is None or time.monotonic() - self._catalog_at > CATALOG_REFRESH:
                await self._load_catalog()
            async for page in self.client.inventory_counts(
                    list(self.config.locations), updated_after=updated_after,
                    limit=self.page_limit):
                result.pages += 1
                result.counts += len(page)
                inbound, page_newest = await self._page(page, result, recent)
                if page_newest is not None and (newest is None or page_newest > newest):
                    newest = page_newest
                if inbound.events or inbound.dead:
                    commits.append(self._track(inbound))
                    await self._queue.put(inbound)
        except SquareError as exc:
            self._ok = False
            result.error = str(exc)
            log.error("Square poll failed: %s", exc, extra=self._extra)
        else:
            self._ok = True
        if commits and not await self._committed(commits):
            log.warning("Square poll not committed; it is read again next time",
                        extra=self._extra)
            return result
        if not result.error:
            result.committed = True
            if newest is not None:
                cutoff = newest - int(POLL_OVERLAP * 1_000_000)
                self._recent = {e: at for e, at in (self._recent | recent).items()
                                if at >= cutoff}
                self._hwm = newest
        return result

    async def _committed(self, commits: list[asyncio.Future[None]]) -> bool:
        """Whether every page was committed (False: a commit failed, `COMMIT_WAIT` passed, or
        the connector was closed meanwhile)."""
        gathered = asyncio.gather(*commits, return_exceptions=True)
        closed = asyncio.ensure_future(self._closed.wait())
        waiters: set[asyncio.Future[Any]] = {gathered, closed}
        done, _ = await asyncio.wait(waiters, timeout=COMMIT_WAIT,
                                     return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if gathered not in done:
            gathered.cancel()
            return False
        return not any(isinstance(x, BaseException) for x in gathered.result())

    def _track(self, inbound: Inbound) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def committed() -> None:
            if not fut.done():
                fut.set_result(None)

        def failed(exc: BaseException) -> None:
            if not fut.done():
                fut.set_exception(exc)

        inbound.on_commit = committed
        inbound.on_failure = failed
        return fut

    async def _page(self, page: list[dict[str, Any]], result: PollResult,
                    recent: dict[str, int]) -> tuple[Inbound, int | None]:
        """One page of counts as one `Inbound`, and the newest `calculated_at` in it."""
        newest: int | None = None
        dead: list[DeadLetter] = []
        kept: list[tuple[str, str, str, int, int, str]] = []
        for entry in page:
            try:
                count = mapping.read_count(entry)
                at = mapping.parse_time(count.calculated_at)
            except mapping.MappingError as exc:
                dead.append(self._dead_count(entry, str(exc)))
                continue
            if newest is None or at > newest:
                newest = at
            square_loc = count.location_id
            loc = self.config.locations.get(square_loc) if isinstance(square_loc, str) else None
            if not count.in_stock_variation or loc is None or not isinstance(square_loc, str):
                result.skipped += 1
                continue
            event_id = mapping.poll_event_id(str(count.catalog_object_id), square_loc,
                                             str(count.calculated_at))
            recent[event_id] = at
            if event_id in self._recent:  # read by the previous poll already (overlap)
                result.skipped += 1
                continue
            try:
                oid = mapping.catalog_id(count.catalog_object_id)
                qty = mapping.parse_quantity(count.quantity)
            except mapping.MappingError as exc:
                dead.append(self._dead_count(entry, str(exc)))
                continue
            kept.append((oid, square_loc, loc, qty, at, event_id))
        await self._lookup(oid for oid, *_ in kept)
        events: list[Event] = []
        for oid, square_loc, loc, qty, at, event_id in kept:
            sku, reason = self._sku(oid)
            if sku is None:
                if reason:
                    dead.append(self._dead_count(None, reason, oid, square_loc))
                else:
                    result.skipped += 1
                continue
            events.append(mapping.count_event(self.name, event_id, sku, loc, qty, at,
                                              square_loc))
        result.events += len(events)
        result.dead += len(dead)
        return Inbound(events=events, dead=dead), newest

    def _dead_count(self, entry: Any, reason: str, oid: str = "", square_loc: str = "") -> \
            DeadLetter:
        raw = entry if entry is not None else {"catalog_object_id": oid, "location_id": square_loc}
        try:
            payload = json.dumps(raw, separators=(",", ":"), default=str).encode()
        except (TypeError, ValueError):
            payload = repr(raw).encode()
        return DeadLetter(self.name, reason[:500], payload[:65536], "poll inventory counts")

