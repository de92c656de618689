"""The Amazon Selling Partner API connector: availability out through the Listings Items API or a
JSON_LISTINGS_FEED, orders in by polling searchOrders.

Outbound (`push`), per call of at most `max_batch` = 25,000 items (the size of one feed):

- up to `feed_threshold` items (500): one `PATCH /listings/2021-08-01/items/{sellerId}/{sku}` per
  SKU, merging `/attributes/fulfillment_availability` = `[{"fulfillment_channel_code":
  "DEFAULT", "quantity": N}]`, a few at a time, paced by the patchListingsItem token bucket (5/s,
  burst 5, following `x-amzn-RateLimit-Limit`). `200 {"status": "ACCEPTED"}` is `ACCEPTED`:
  Amazon queued the change and applies it within minutes, so the pusher records it as accepted,
  not as shown, and reconciliation (`read_levels`) confirms it later. `{"status": "INVALID",
  "issues": [...]}`, a 400 or a 404 (no such listing) are `PERMANENT` with Amazon's messages. A
  429 is waited out inside the client. A 5xx or a timeout makes that item `TRANSIENT`; when no
  item at all could be sent, the whole call raises `TransientPushError` instead.
- more than `feed_threshold` items: one JSON_LISTINGS_FEED (`feeds.py`). Amazon allows about one
  feed per two minutes (createFeed 0.0083/s; five JSON_LISTINGS_FEEDs per five minutes per
  region); when the last feed was created less than `feed_min_interval` ago, the call raises
  `TransientPushError` with `retry_after` = the time left. The pusher then waits that long and
  pushes the *same keys* again with their latest values, so the batch stays whole and goes out as
  one feed. (Per-item TRANSIENT results would come back at jittered times and split the batch
  into small pushes.) Once created, the feed is polled every `feed_poll_every` until it is DONE,
  at most `feed_timeout`; then the processing report decides: a message with an ERROR issue is
  `PERMANENT` with its messages, every other one `ACCEPTED`. A feed that ends FATAL or CANCELLED
  raises `TransientPushError` (the same keys go again, in a new feed, after the interval). A feed
  still processing after `feed_timeout`, or whose report cannot be read, is `ACCEPTED` for all
  its items: Amazon has it, and reconciliation will find anything it did not apply.

  While the pusher waits for a feed, new changes of this channel wait too (they coalesce in the
  outbox); this is the cost of bulk updates on Amazon, which the PATCH path avoids for the small
  changes of the steady state.

Reconciliation (`read_levels`): `GET /listings/2021-08-01/items/{sellerId}/{sku}
?includedData=fulfillmentAvailability` per SKU, paced by the getListingsItem bucket (5/s): the
`DEFAULT` channel's `quantity`. Unknown listings are left out.

Inbound: `searchOrders` every `poll_every` (`orders.py`). Amazon has no webhooks; its
notifications go to SQS or EventBridge, which syncd does not consume: `webhook()` answers 404.
The channel of an order is the first channel this connector serves; serve one channel per
Amazon connector (one seller account and region).

Authentication: `auth.py` (LWA, cached until 60 s before expiry, refreshed once on 401/403).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._http import HttpConnector, service_url
from connectors.base import (
    ConnectorContext,
    Inbound,
    PermanentPushError,
    PushItem,
    PushResult,
    PushStatus,
    TransientPushError,
    WebhookReply,
)
from syncd.config import Duration, PositiveDuration, Secret

from . import orders as om
from .auth import LwaAuth
from .client import SpApiClient, error_text
from .feeds import FEED_TYPE, MAX_MESSAGES, FeedClient, Report, build_feed, quantity_patches

__all__ = ["AmazonSpConfig", "AmazonSpConnector"]

log = logging.getLogger("connectors.amazon_sp")

PATCH_CONCURRENCY = 5  # requests in flight at once (the bucket paces them anyway)
_REASON_MAX = 500


NonEmpty = Annotated[str, annotated_types.MinLen(1), annotated_types.MaxLen(200)]


class AmazonSpConfig(BaseModel):
    """`[connectors.<name>]` with `type = "amazon_sp"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the regional SP-API endpoint (NA: sellingpartnerapi-na, FE: sellingpartnerapi-fe)
    endpoint: str = "https://sellingpartnerapi-eu.amazon.com"
    token_url: str = "https://api.amazon.com/auth/o2/token"  # noqa: S105 - a URL, not a secret
    client_id: NonEmpty
    client_secret: Secret
    refresh_token: Secret
    seller_id: NonEmpty  # the merchant token (sellerId of the Listings Items API)
    marketplace_ids: Annotated[list[NonEmpty], Field(min_length=1, max_length=50)]
    product_type: NonEmpty = "PRODUCT"
    # more pending SKUs than this in one push: one JSON_LISTINGS_FEED instead of PATCHes
    feed_threshold: Annotated[int, Field(ge=0, le=MAX_MESSAGES)] = 500
    poll_every: PositiveDuration = 120.0  # searchOrders
    feed_poll_every: PositiveDuration = 30.0  # getFeed while a feed is processed
    feed_timeout: PositiveDuration = 1800.0  # after this, a feed still processing is ACCEPTED
    # at least this long between two createFeed calls (createFeed is 0.0083/s)
    feed_min_interval: Annotated[Duration, annotated_types.Ge(0)] = 120.0
    # how far back the first searchOrders poll after a start looks
    orders_lookback: PositiveDuration = 86400.0
    timeout: PositiveDuration = 20.0

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        return service_url(value, "endpoint")

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        return service_url(value, "token_url")


def _issues_text(issues: Any) -> str:
    """ERROR issues of a Listings Items answer, else all of them."""
    if not isinstance(issues, list):
        return ""
    found = [i for i in issues if isinstance(i, dict)]
    errors = [i for i in found if str(i.get("severity", "")).upper() == "ERROR"] or found
    parts = []
    for issue in errors:
        text = str(issue.get("message") or "no message")
        if issue.get("code"):
            text += f" (code {issue['code']})"
        parts.append(text)
    return "; ".join(parts)


def _quantity(doc: Any) -> int | None:
    """The DEFAULT (merchant-fulfilled) quantity of a getListingsItem answer."""
    if not isinstance(doc, dict):
        return None
    for entry in doc.get("fulfillmentAvailability") or ():
        if isinstance(entry, dict) and entry.get("fulfillmentChannelCode") == "DEFAULT":
            qty = entry.get("quantity")
            if isinstance(qty, int) and not isinstance(qty, bool):
                return qty
    return None


class AmazonSpConnector(HttpConnector):
    config_model: ClassVar[type[BaseModel]] = AmazonSpConfig
    max_batch = MAX_MESSAGES  # one JSON_LISTINGS_FEED; `push` decides PATCH vs feed

    def __init__(self, name: str, config: AmazonSpConfig, context: ConnectorContext) -> None:
        super().__init__(name, context)
        self.config = config
        self.auth = LwaAuth(self._session, config.token_url, config.client_id,
                            config.client_secret, config.refresh_token, config.timeout)
        self.client = SpApiClient(self._session, config.endpoint, self.auth, config.timeout)
        self.feeds = FeedClient(self.client, config.marketplace_ids, config.feed_min_interval)
        self._mark: datetime | None = None
        self._seen = om.Seen()
        self._extra = {"connector": name}
        # counters and the figures of the last feed (tests, the benchmark)
        self.patches = 0
        self.quantities_pushed = 0
        self.last_feed: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the credentials with a first token exchange (a failure is logged, not raised:
        `connected` stays false and the next call tries again)."""
        await super().start()
        try:
            await self.auth.token()
        except (TransientPushError, PermanentPushError) as exc:
            log.error("cannot get an LWA access token: %s", exc.reason, extra=self._extra)

    @property
    def connected(self) -> bool:
        return self._started and self.auth.ok and self.client.ok

    @property
    def calls(self) -> int:
        return self.client.calls

    @property
    def throttled_calls(self) -> int:
        return self.client.throttled_calls

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        return WebhookReply(
            404, error="not_found",
            detail="Amazon SP-API notifications go to SQS or EventBridge, not to webhooks; "
                   "orders are polled with searchOrders")

    # -- push -----------------------------------------------------------------------------------

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        results: dict[tuple[str, str], PushResult] = {}
        live: list[PushItem] = []
        for it in items:
            key = (it.sku, it.location)
            if it.location:
                results[key] = PushResult(it.sku, it.location, PushStatus.PERMANENT,
                                          reason="Amazon takes one pooled quantity per SKU, not "
                                                 f"per location ({it.location!r})")
            elif it.desired < 0:
                results[key] = PushResult(it.sku, it.location, PushStatus.PERMANENT,
                                          reason="negative quantity")
            elif key not in results:
                results[key] = PushResult(it.sku, it.location, PushStatus.TRANSIENT,
                                          reason="not sent")
                live.append(it)
        if live:
            if len(live) > self.config.feed_threshold:
                done = await self._push_feed(live)
            else:
                done = await self._push_patches(live)
            results.update(done)
        return [results[(it.sku, it.location)] for it in items]

    # -- one PATCH per SKU ------------------------------------------------------------------------

    def _item_path(self, sku: str) -> str:
        return (f"/listings/2021-08-01/items/{quote(self.config.seller_id, safe='')}/"
                f"{quote(sku, safe='')}")

    async def _push_patches(self, items: list[PushItem]) -> dict[tuple[str, str], PushResult]:
        todo = deque(items)
        results: dict[tuple[str, str], PushResult] = {}
        failures: list[TransientPushError] = []
        refused: list[PermanentPushError] = []

        async def worker() -> None:
            while todo and not refused:
                it = todo.popleft()
                try:
                    results[(it.sku, it.location)] = await self._patch(it)
                except TransientPushError as exc:
                    failures.append(exc)
                    results[(it.sku, it.location)] = PushResult(
                        it.sku, it.location, PushStatus.TRANSIENT, reason=exc.reason)
                except PermanentPushError as exc:
                    refused.append(exc)

        await asyncio.gather(*(worker() for _ in range(min(PATCH_CONCURRENCY, len(items)))))
        if refused:  # bad credentials or a missing role: the whole call
            raise refused[0]
        if failures and len(failures) == len(items):  # nothing could be done
            waits = [f.retry_after for f in failures if f.retry_after is not None]
            raise TransientPushError(failures[0].reason, max(waits) if waits else None)
        return results

    async def _patch(self, it: PushItem) -> PushResult:
        body = {"productType": self.config.product_type,
                "patches": quantity_patches(it.desired)}
        resp = await self.client.call(
            "patchListingsItem", "PATCH", self._item_path(it.sku),
            params={"marketplaceIds": ",".join(self.config.marketplace_ids),
                    "issueLocale": "en_US"},
            body=body)
        self.patches += 1
        doc = resp.body if isinstance(resp.body, dict) else {}

        def result(status: PushStatus, reason: str = "") -> PushResult:
            return PushResult(it.sku, it.location, status, reason=reason[:_REASON_MAX])

        if resp.status == 200:
            status = doc.get("status")
            if status == "ACCEPTED":
                self.quantities_pushed += 1
                return result(PushStatus.ACCEPTED)
            if status == "INVALID":
                text = _issues_text(doc.get("issues")) or "no issues given"
                return result(PushStatus.PERMANENT, f"Amazon refused the listing update: {text}")
            return result(PushStatus.TRANSIENT,
                          f"patchListingsItem answered an unknown status {status!r}")
        if resp.status == 404:
            return result(PushStatus.PERMANENT,
                          f"no Amazon listing for this SKU ({error_text(resp.body)})")
        return result(PushStatus.PERMANENT,
                      f"patchListingsItem answered HTTP {resp.status}: {error_text(resp.body)}")

    # -- one feed ---------------------------------------------------------------------------------

    async def _push_feed(self, items: list[PushItem]) -> dict[tuple[str, str], PushResult]:
        wait = self.feeds.wait_before_create()
        if wait > 0:
            raise TransientPushError(
                f"{FEED_TYPE}: the previous feed was created less than "
                f"{self.config.feed_min_interval:g}s ago; next one in {wait:.1f}s", wait)
        batch = items[:MAX_MESSAGES]
        results: dict[tuple[str, str], PushResult] = {}

        def all_(status: PushStatus, reason: str = "") -> dict[tuple[str, str], PushResult]:
            for it in batch:
                results[(it.sku, it.location)] = PushResult(it.sku, it.location, status,
                                                            reason=reason[:_REASON_MAX])
            return results

        started = time.perf_counter()
        calls_before = self.client.calls
        content = build_feed(self.config.seller_id, self.config.product_type,
                             [(it.sku, it.desired) for it in batch])
        feed_id = await self.feeds.submit(content)
        state = await self.feeds.wait(feed_id, self.config.feed_poll_every,
                                      within=self.config.feed_timeout)
        self.last_feed = {"feed_id": feed_id, "messages": len(batch), "bytes": len(content),
                          "status": state.status, "polls": state.polls}
        if state.status in ("FATAL", "CANCELLED"):
            log.warning("%s %s ended %s; its %d quantities go again in a new feed", FEED_TYPE,
                        feed_id, state.status, len(batch), extra=self._extra)
            raise TransientPushError(f"{FEED_TYPE} {feed_id} ended {state.status}",
                                     self.feeds.wait_before_create())
        if state.status == "WAITING":
            log.warning("%s %s still processing after %gs; its quantities are taken as accepted "
                        "(reconciliation will check them)", FEED_TYPE, feed_id,
                        self.config.feed_timeout, extra=self._extra)
            return all_(PushStatus.ACCEPTED, f"feed {feed_id} still processing")
        report: Report | None = None
        if state.result_document_id:
            try:
                report = await self.feeds.report(state.result_document_id)
            except TransientPushError as exc:
                log.warning("%s %s: %s; its quantities are taken as accepted", FEED_TYPE,
                            feed_id, exc.reason, extra=self._extra)
        if report is None:
            return all_(PushStatus.ACCEPTED, f"feed {feed_id} done, no processing report")
        if report.feed_errors and not report.accepted and not report.errors:
            text = "; ".join(report.feed_errors)
            log.error("%s %s refused as a whole: %s", FEED_TYPE, feed_id, text[:300],
                      extra=self._extra)
            return all_(PushStatus.PERMANENT, f"Amazon refused the feed: {text}")
        accepted = 0
        for n, it in enumerate(batch, start=1):
            errors = report.errors.get(n)
            if errors:
                results[(it.sku, it.location)] = PushResult(
                    it.sku, it.location, PushStatus.PERMANENT,
                    reason=f"Amazon refused the listing update: {'; '.join(errors)}"
                    [:_REASON_MAX])
            else:
                accepted += 1
                results[(it.sku, it.location)] = PushResult(it.sku, it.location,
                                                            PushStatus.ACCEPTED)
        self.quantities_pushed += accepted
        seconds = time.perf_counter() - started
        self.last_feed.update(accepted=accepted, refused=len(batch) - accepted,
                              warnings=report.warnings, seconds=seconds,
                              calls=self.client.calls - calls_before)
        log.info("%s %s done in %.1fs: %d accepted, %d refused", FEED_TYPE, feed_id, seconds,
                 accepted, len(batch) - accepted, extra=self._extra)
        return results

    # -- reconciliation -------------------------------------------------------------------------

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        todo = deque(dict.fromkeys(k for k in keys if k[1] == ""))
        out: dict[tuple[str, str], int] = {}
        failures: list[TransientPushError] = []
        asked = len(todo)

        async def worker() -> None:
            while todo:
                key = todo.popleft()
                try:
                    qty = await self._read(key[0])
                except TransientPushError as exc:
                    failures.append(exc)
                    continue
                if qty is not None:
                    out[key] = qty

        await asyncio.gather(*(worker() for _ in range(min(PATCH_CONCURRENCY, asked))))
        if failures:
            if len(failures) == asked:
                raise failures[0]
            log.warning("%d of %d listings could not be read: %s", len(failures), asked,
                        failures[0].reason, extra=self._extra)
        return out

    async def _read(self, sku: str) -> int | None:
        resp = await self.client.call(
            "getListingsItem", "GET", self._item_path(sku),
            params={"marketplaceIds": ",".join(self.config.marketplace_ids),
                    "includedData": "fulfillmentAvailability"})
        if resp.status == 200:
            return _quantity(resp.body)
        if resp.status != 404:
            log.warning("getListingsItem answered HTTP %d: %s", resp.status,
                        error_text(resp.body), extra=self._extra)
        return None

    # -- orders ---------------------------------------------------------------------------------

    def events(self) -> AsyncIterator[Inbound]:
        return self._poll_loop()

    async def _poll_loop(self) -> AsyncIterator[Inbound]:
        """One `Inbound` per poll that found something, every `poll_every`, until `close()`."""
        while not self._closed.is_set():
            inbound: Inbound | None = None
            try:
                inbound = await self.poll_orders_once()
            except (TransientPushError, PermanentPushError) as exc:
                log.warning("searchOrders failed: %s", exc.reason, extra=self._extra)
            if inbound is not None and (inbound.events or inbound.dead):
                yield inbound
            await self._idle(self.config.poll_every)

    async def poll_orders_once(self) -> Inbound:
        """One searchOrders pass (all pages) since the high-water mark. The mark moves when the
        returned `Inbound` is committed (at once when it holds nothing)."""
        channel = self._channel()
        if channel is None:
            log.error("this Amazon connector serves no channel: orders are not read",
                      extra=self._extra)
            return Inbound()
        started = datetime.now(UTC)
        mark = self._mark or started - timedelta(seconds=self.config.orders_lookback)
        params = {
            "lastUpdatedAfter": om.iso(mark),
            "marketplaceIds": ",".join(self.config.marketplace_ids),
            "fulfilledBy": "MERCHANT",
            "includedData": "FULFILLMENT",
            "maxResultsPerPage": "100",
        }
        inbound = Inbound()
        kinds: dict[str, str] = {}
        skipped: list[str] = []
        token: str | None = None
        while True:
            page_params = dict(params)
            if token is not None:
                page_params["paginationToken"] = token
            resp = await self.client.call("searchOrders", "GET", "/orders/2026-01-01/orders",
                                          params=page_params)
            if resp.status != 200:
                raise TransientPushError(
                    f"searchOrders answered HTTP {resp.status}: {error_text(resp.body)}")
            try:
                page = om.read_page(resp.body)
            except om.MappingError as exc:
                raise TransientPushError(str(exc)) from None
            for order in page.orders:
                oid = order.get("orderId") if isinstance(order, dict) else None
                previous = (kinds.get(oid) or self._seen.get(oid)) if isinstance(oid, str) \
                    else None
                try:
                    mapped = om.events_of(self.name, channel, order, previous)
                except om.MappingError as exc:
                    inbound.dead.append(om.dead_letter(self.name, order, str(exc)))
                    continue
                inbound.events.extend(mapped.events)
                skipped.extend(f"order {mapped.order_id}: {s}" for s in mapped.skipped)
                if mapped.kind is not None:
                    kinds[mapped.order_id] = mapped.kind
            token = page.next_token
            if token is None:
                break
        if skipped:
            log.info("order lines skipped: %s", "; ".join(skipped)[:300], extra=self._extra)
        new_mark = max(mark, started - om.SETTLE)

        def commit() -> None:
            self._mark = new_mark if self._mark is None else max(self._mark, new_mark)
            self._seen.update(kinds)

        if inbound.events or inbound.dead:
            inbound.on_commit = commit
        else:
            commit()
        return inbound
