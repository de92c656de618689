"""The WooCommerce connector: availability out through the REST API v3 batch endpoints, orders in
by polling and by signed webhooks, drift in by `product.updated` webhooks and reconciliation.

Outbound (`push`), per call of at most 100 items (WooCommerce's default batch limit):

1. SKU → product. `GET products?sku=A,B,…` (comma-separated SKUs; with `sku` set WooCommerce
   searches variations too and returns them with `type: "variation"` and their `parent_id`). The
   mapping is cached; SKUs match exactly (WooCommerce's search ignores case, the ledger does
   not). A SKU missing from the cache is looked up again on every push that names it (the
   merchant may have created it since); still unknown, it is a permanent failure "unknown SKU on
   WooCommerce". A product WooCommerce no longer has (`*_invalid_id`, or gone from the
   read-back) is forgotten and its SKU looked up again. The cache keeps each variation's parent:
   a variation's stock is written through its parent's endpoint.
2. One `POST products/batch` for simple products and one `POST products/{parent}/variations/batch`
   per variable product, `{"update": [{"id", "manage_stock": true, "stock_quantity": desired}]}`,
   at most 100 objects each (413 `woocommerce_rest_request_entity_too_large` above that; a site
   that lowered the limit with the `woocommerce_rest_batch_items_limit` filter is followed: the
   batch is split to the limit its error names). An item of the answer that is
   `{"id", "error": {"code", "message"}}` fails alone and permanently (for example
   `product_external_invalid_manage_stock`).
3. Right after each batch write, the written products are read back (`GET products?include=…`,
   `GET products/{parent}/variations?include=…`). Where WooCommerce shows something other than
   what was just written, the item is `CONFLICT` with `remote` = what it shows.

Whole-call failures: 429, 5xx, timeouts → `TransientPushError` (the pusher retries with backoff,
never sooner than `Retry-After`); 401/403 → `PermanentPushError`. A transient failure after some
batches of the call were written fails only the remaining items, so what was written settles.

No compare-and-set
------------------

WooCommerce has no conditional write: `stock_quantity` is set to an absolute value, whatever the
product showed. WooCommerce also decrements stock itself when an order is paid (and puts it back
when an order is cancelled), in the same database row. So a sale on the site that lands after
syncd computed a figure and before syncd's write is erased by the write: the site shows one unit
per such sale too many until syncd applies the order (webhook `order.created`/`order.updated`, or
the next poll) and pushes again — and if the product was nearly sold out, it can be sold twice.

What this connector does to keep that window narrow:

1. Push promptly: the pusher sends each due batch as soon as it is committed, and nothing is read
   before writing (a read-then-write would only widen the gap it cannot close).
2. An order syncd has applied is already inside the figure it pushes: applying an order makes the
   engine commit a new version of the SKU's figure, and the pusher always sends the newest version.
3. Read back right after writing. A quantity that moved between the write and the read-back is
   reported as `CONFLICT` (`remote` = the quantity read), so syncd records what the site shows.
4. Never undo an unexplained decrement early. When WooCommerce is seen (read-back, reconciliation
   read or `product.updated` webhook) showing *less* than syncd last wrote, the SKU is *held*: a
   push that would raise it above what the site shows is answered `TRANSIENT` ("held") instead of
   written, until (a) syncd pushes a newer version after an order for that SKU reached this
   connector (the order is then inside the figure), or (b) `sale_grace` passes (default twice
   `poll_every`; no order came, so it was an edit in the admin: syncd's figure wins, rule 5).
   Lowering is never held: it cannot oversell. A stale `product.updated` (older than syncd's last
   write) is ignored.

The residual window, precisely: a sale is overwritten when its stock decrement commits in
WooCommerce after syncd's last sight of that product (the read-back of its previous write, a
`product.updated` webhook, a reconciliation read) and before syncd's next write of it, and syncd
had not applied its order when it computed the written figure. From that write until syncd applies
the order and its next push lands, the site shows one unit too many per such sale. A decrement
syncd has seen is never overwritten early (the hold). WooCommerce saves the product when an order
changes its stock, so with a `product.updated` webhook the last sight is seconds old and the
window is the webhook's delivery delay (WooCommerce queues deliveries in Action Scheduler: seconds,
up to a minute on a quiet site); the order itself follows by webhook, or within `poll_every`.

Inbound
-------

Orders are polled with `GET orders?modified_after=…&dates_are_gmt=true&orderby=modified&order=asc
&per_page=100`, following `Link: <…>; rel="next"`, and mapped exactly like webhooks (`mapping.py`:
same event ids, so a poll and a webhook of the same order deduplicate in the ledger). Each page is
one `Inbound`. The high-water mark (newest `date_modified_gmt` seen) lives in memory and advances
only when every page of a pass is committed; the next pass starts one second before it (the API
compares whole seconds, strictly). An order is delivered again only when it stands for other
events than the ones already committed for it (a new status), so the overlap, and a modification
in the same second as the previous one, cost nothing and lose nothing. A pass in which an order
shows up twice was torn by an order modified during the paging (which moves it to the end and
shifts later pages): its mark is not advanced and it is read again.

At start, one pass reads every open order (`status=pending,processing,on-hold`), so orders placed
before syncd first ran are reserved, then polling starts from `order_lookback` (default 24 h)
before the start, so cancellations and completions that happened while syncd was down are applied.
Re-reading is harmless: every event id is idempotent. Not tracked: edits to the quantities of an
open order's existing lines, and orders moved to the trash.

Webhooks: `order.created`/`order.updated` (mapped as above), `product.updated` (a `channel_level`
for drift, rule 5), WooCommerce's unsigned ping (200). Wrong signature 401, malformed JSON 400,
signed but unusable: dead-lettered. The channel of every event is the first channel this connector
serves (`context.channels`): serve one channel per WooCommerce connector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from connectors._http import HttpConnector, service_url
from connectors.base import (
    ConnectorContext,
    DeadLetter,
    Inbound,
    PermanentPushError,
    PushItem,
    PushResult,
    PushStatus,
    TransientPushError,
    WebhookReply,
)
from syncd.config import Duration, PositiveDuration, Secret
from syncd.model import Channel, Event, EventType

from . import mapping
from .client import RestClient, WooError, next_params

__all__ = ["WooCommerceConfig", "WooCommerceConnector"]

log = logging.getLogger("connectors.woocommerce")

MAX_BATCH = 100  # WooCommerce: "Unable to accept more than 100 items for this request."
PER_PAGE = 100  # the REST API's largest page
OVERLAP_US = 1_000_000  # modified_after compares whole seconds, strictly
_PRODUCT_FIELDS = "id,sku,type,parent_id,manage_stock,stock_quantity,date_modified_gmt"
_ORDER_FIELDS = "id,status,date_created_gmt,date_modified_gmt,date_completed_gmt,line_items"
_SEARCH_CHUNK = 50  # SKUs per `products?sku=` lookup
_SEARCH_CHARS = 1500  # ... and characters, to keep URLs short
_SEARCH_PAGES = 5
_MAX_PAGES = 10_000
_VANISHED = "the product is gone from WooCommerce; its SKU is looked up again"
_LIMIT = re.compile(r"([0-9]+)")


class WooCommerceConfig(BaseModel):
    """`[connectors.<name>]` with `type = "woocommerce"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the site root (https://shop.example.com, or https://example.com/shop for WordPress in a
    # subdirectory); requests go to {url}/wp-json/wc/v3. Plain http only for a loopback simulator.
    url: str
    consumer_key: Secret  # a REST API key with Read/Write permission (ck_…)
    consumer_secret: Secret  # its secret (cs_…)
    webhook_secret: Secret  # the secret of the webhooks pointing at /webhooks/<name>
    poll_every: PositiveDuration = 60.0  # order polling period
    timeout: PositiveDuration = 15.0  # per HTTP request
    # polling starts this long before the daemon's start (orders changed while it was down)
    order_lookback: Duration = 86_400.0
    # how long a push that would undo an unexplained WooCommerce decrement waits for its order;
    # unset: twice poll_every
    sale_grace: Duration | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = service_url(value, "url", "https://shop.example.com",
                          https_reason="WooCommerce accepts Basic authentication over HTTPS only")
        if "/wp-json" in urlsplit(url).path:
            raise ValueError("url is the site root, without /wp-json/wc/v3")
        return url

    @property
    def api_root(self) -> str:
        return f"{self.url}/wp-json/wc/v3"

    @property
    def grace(self) -> float:
        return self.sale_grace if self.sale_grace is not None else 2 * self.poll_every


@dataclass(slots=True, frozen=True)
class _Target:
    product_id: int
    parent_id: int | None  # the variable product of a variation


@dataclass(slots=True, frozen=True)
class _Written:
    qty: int
    version: int
    modified: str  # date_modified_gmt WooCommerce reported for the write


@dataclass(slots=True)
class _Hold:
    """WooCommerce showed less than syncd last wrote, and no order explains it yet."""

    shown: int
    written: int
    until: float  # monotonic deadline (sale_grace)
    order_version: int | None = None  # newest version asked for when an order of the SKU came


def _stock(doc: Mapping[str, Any]) -> int | None:
    """The stock a product document shows when it manages its own, else None."""
    if doc.get("manage_stock") is not True:
        return None
    value = doc.get("stock_quantity")
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _int_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def _search_chunks(skus: Iterable[str]) -> list[list[str]]:
    """SKUs grouped for `products?sku=`; a SKU with a comma is looked up alone (WooCommerce
    splits the parameter on commas)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for sku in skus:
        if "," in sku:
            chunks.append([sku])
            continue
        if current and (len(current) >= _SEARCH_CHUNK or size + len(sku) + 1 > _SEARCH_CHARS):
            chunks.append(current)
            current, size = [], 0
        current.append(sku)
        size += len(sku) + 1
    if current:
        chunks.append(current)
    return chunks


class WooCommerceConnector(HttpConnector):
    config_model: ClassVar[type[BaseModel]] = WooCommerceConfig
    max_batch = MAX_BATCH

    def __init__(self, name: str, config: WooCommerceConfig, context: ConnectorContext,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, context)
        self.config = config
        self.clock = clock
        self.client = RestClient(self._session, config.api_root, config.consumer_key,
                                 config.consumer_secret, config.timeout)
        self._secret = config.webhook_secret.get_secret_value().encode()
        self._targets: dict[str, _Target] = {}  # sku -> product
        self._written: dict[str, _Written] = {}
        self._held: dict[str, _Hold] = {}
        self._asked: dict[str, int] = {}  # sku -> newest version push() was given
        self._batch_limit = MAX_BATCH
        # order polling
        self._hwm: int | None = None  # µs, newest date_modified_gmt committed
        # order id -> (date_modified_gmt, fingerprint of its events) delivered and committed
        self._delivered: dict[int, tuple[str, str]] = {}
        self._scanned = False
        self._orderby_modified = True
        self._dead_seen: set[bytes] = set()  # id-less orders already dead-lettered
        self.poll_ok = True
        # counters (read by tests and operators)
        self.batch_requests = 0
        self.quantities_pushed = 0
        self.conflicts = 0
        self.held_pushes = 0
        self.passes = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to connect: SKUs are discovered lazily, orders polled by `events()`."""
        await super().start()
        if self._hwm is None:
            self._hwm = time.time_ns() // 1000 - int(self.config.order_lookback * 1e6)

    @property
    def connected(self) -> bool:
        return self._started and self.client.ok and self.poll_ok

    @property
    def calls(self) -> int:
        return self.client.calls

    # -- SKUs -----------------------------------------------------------------------------------

    def _remember(self, sku: str, product_id: int, parent_id: int | None) -> None:
        known = self._targets.get(sku)
        if known is not None and known.product_id != product_id:
            log.info("a SKU moved to another WooCommerce product", extra={"connector": self.name})
        self._targets[sku] = _Target(product_id, parent_id)

    def _remember_doc(self, doc: Mapping[str, Any]) -> str | None:
        pid = _int_id(doc.get("id"))
        sku = doc.get("sku")
        if pid is None or not isinstance(sku, str) or not sku:
            return None
        parent = _int_id(doc.get("parent_id")) if doc.get("type") == "variation" else None
        self._remember(sku, pid, parent)
        return sku

    def _forget(self, sku: str) -> None:
        self._targets.pop(sku, None)

    async def _search(self, skus: Iterable[str]) -> dict[str, dict[str, Any]]:
        """`GET products?sku=…`: the documents of `skus` found (simple products, variations,
        variable parents), remembered in the SKU cache."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _search_chunks(sorted(set(skus))):
            wanted = set(chunk)
            params: list[tuple[str, str]] | None = [
                ("sku", ",".join(chunk)), ("per_page", str(PER_PAGE)),
                ("_fields", _PRODUCT_FIELDS)]
            for _ in range(_SEARCH_PAGES):
                if params is None:
                    break
                resp = await self.client.request("GET", "products", params=params)
                docs = resp.data if isinstance(resp.data, list) else []
                for doc in docs:
                    if isinstance(doc, dict) and isinstance(doc.get("sku"), str) \
                            and doc["sku"] in wanted:
                        sku = self._remember_doc(doc)
                        if sku is not None:
                            found[sku] = doc
                if wanted.issubset(found):
                    break
                params = next_params(resp.headers)
        return found

    async def _read_ids(self, parent: int | None, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Products (parent None) or variations of `parent` by id."""
        path = "products" if parent is None else f"products/{parent}/variations"
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), PER_PAGE):
            chunk = ids[i : i + PER_PAGE]
            params: list[tuple[str, str]] | None = [
                ("include", ",".join(str(n) for n in chunk)), ("per_page", str(PER_PAGE)),
                ("_fields", _PRODUCT_FIELDS)]
            for _ in range(_SEARCH_PAGES):
                if params is None:
                    break
                resp = await self.client.request("GET", path, params=params)
                for doc in resp.data if isinstance(resp.data, list) else []:
                    pid = _int_id(doc.get("id")) if isinstance(doc, dict) else None
                    if pid is not None and isinstance(doc, dict):
                        out[pid] = doc
                params = next_params(resp.headers)
        return out

    # -- the no-CAS guard -----------------------------------------------------------------------

    def _observe(self, sku: str, shown: int) -> None:
        """WooCommerce shows `shown` for `sku`: hold the SKU if that is below syncd's last write
        (a sale whose order syncd has not applied yet, or a hand edit)."""
        written = self._written.get(sku)
        if written is None:
            return
        if shown >= written.qty:
            self._held.pop(sku, None)
            return
        hold = self._held.get(sku)
        if hold is None:
            self._held[sku] = _Hold(shown, written.qty, self.clock() + self.config.grace)
        else:
            hold.shown = shown

    def _note_orders(self, skus: Iterable[str]) -> None:
        """An order for these SKUs reached the connector: once syncd pushes a newer version, the
        order is inside the figure and a hold can end."""
        for sku in skus:
            hold = self._held.get(sku)
            if hold is not None and hold.order_version is None:
                hold.order_version = self._asked.get(sku, -1)

    def _hold_reason(self, it: PushItem) -> str | None:
        hold = self._held.get(it.sku)
        if hold is None:
            return None
        now = self.clock()
        if (now >= hold.until or it.desired <= hold.shown
                or (hold.order_version is not None and it.version > hold.order_version)):
            del self._held[it.sku]
            return None
        self.held_pushes += 1
        return (f"held: WooCommerce shows {hold.shown}, below the {hold.written} syncd wrote, "
                f"and no order explains it yet; not raising it to {it.desired} for up to "
                f"{hold.until - now:.0f}s while the order arrives")

    # -- push -----------------------------------------------------------------------------------

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        results: dict[tuple[str, str], PushResult] = {}

        def done(it: PushItem, status: PushStatus, remote: int | None = None,
                 reason: str = "") -> None:
            results[(it.sku, it.location)] = PushResult(it.sku, it.location, status, remote,
                                                        reason)

        live: list[PushItem] = []
        for it in items:
            self._asked[it.sku] = max(self._asked.get(it.sku, -1), it.version)
            if it.location != "":
                done(it, PushStatus.PERMANENT,
                     reason="WooCommerce keeps one stock figure per product: a channel with a "
                            "location_map cannot be served")
            elif it.desired < 0:
                done(it, PushStatus.PERMANENT, reason="negative quantity")
            else:
                live.append(it)

        unknown = {it.sku for it in live if it.sku not in self._targets}
        if unknown:
            try:
                await self._search(unknown)
            except WooError as exc:  # no products API there (404 rest_no_route), a redirect
                raise PermanentPushError(f"WooCommerce refused the SKU lookup: {exc}"[:300]) \
                    from None
        groups: dict[int | None, list[tuple[PushItem, _Target]]] = {}
        for it in live:
            target = self._targets.get(it.sku)
            if target is None:
                done(it, PushStatus.PERMANENT, reason="unknown SKU on WooCommerce")
                continue
            held = self._hold_reason(it)
            if held is not None:
                done(it, PushStatus.TRANSIENT, reason=held)
                continue
            groups.setdefault(target.parent_id, []).append((it, target))

        stopped = ""
        wrote = False
        for parent in sorted(groups, key=lambda p: (p is not None, p or 0)):
            members = groups[parent]
            i = 0
            while i < len(members) and not stopped:
                chunk = members[i : i + self._batch_limit]
                try:
                    await self._write(parent, chunk, done)
                except WooError as exc:
                    if exc.status == 413 and len(chunk) > 1:
                        self._shrink(exc, len(chunk))
                        continue  # the same items again, in smaller batches
                    self._refused(chunk, exc, done)
                except TransientPushError as exc:
                    if not wrote:
                        raise  # nothing written yet: the pusher retries the whole call
                    stopped = exc.reason  # keep what was written; the rest is retried
                    break
                else:
                    wrote = True
                i += len(chunk)
            if stopped:
                break
        reason = stopped or "no result for this item"
        return [results.get((it.sku, it.location))
                or PushResult(it.sku, it.location, PushStatus.TRANSIENT, reason=reason)
                for it in items]

    def _shrink(self, exc: WooError, size: int) -> None:
        match = _LIMIT.search(exc.message)
        limit = int(match.group(1)) if match else 0
        self._batch_limit = limit if 0 < limit < size else max(1, size // 2)
        log.warning("WooCommerce accepts at most %d items per batch on this site",
                    self._batch_limit, extra={"connector": self.name})

    def _refused(self, chunk: Sequence[tuple[PushItem, _Target]], exc: WooError,
                 done: Callable[..., None]) -> None:
        """A whole batch request refused (not per item): a parent that is gone, a bad request."""
        for it, _target in chunk:
            if exc.code.endswith("_invalid_id") or exc.status == 404:
                self._forget(it.sku)
                done(it, PushStatus.TRANSIENT, reason=_VANISHED)
            else:
                done(it, PushStatus.PERMANENT,
                     reason=f"WooCommerce refused the batch: HTTP {exc.status} {exc.code}: "
                            f"{exc.message}"[:300])

    async def _write(self, parent: int | None, chunk: Sequence[tuple[PushItem, _Target]],
                     done: Callable[..., None]) -> None:
        path = "products/batch" if parent is None else f"products/{parent}/variations/batch"
        body = {"update": [{"id": t.product_id, "manage_stock": True,
                            "stock_quantity": it.desired} for it, t in chunk]}
        resp = await self.client.request("POST", path, body=body)
        self.batch_requests += 1
        entries = resp.data.get("update") if isinstance(resp.data, dict) else None
        if not isinstance(entries, list):
            raise TransientPushError("WooCommerce answered the batch without an 'update' list")
        by_id: dict[int, dict[str, Any]] = {}
        for entry in entries:
            pid = _int_id(entry.get("id")) if isinstance(entry, dict) else None
            if pid is not None and isinstance(entry, dict):
                by_id.setdefault(pid, entry)
        written: list[tuple[PushItem, _Target]] = []
        for it, target in chunk:
            entry = by_id.get(target.product_id)
            if entry is None:
                done(it, PushStatus.TRANSIENT,
                     reason="WooCommerce's batch answer has no result for this product")
                continue
            error = entry.get("error")
            if error is not None:
                code = str(error.get("code", "unknown")) if isinstance(error, dict) else "unknown"
                message = str(error.get("message", "")) if isinstance(error, dict) else ""
                if code.endswith("_invalid_id"):
                    self._forget(it.sku)
                    done(it, PushStatus.TRANSIENT, reason=_VANISHED)
                else:
                    done(it, PushStatus.PERMANENT,
                         reason=f"WooCommerce refused: {code}: {message}"[:300])
                continue
            modified = entry.get("date_modified_gmt")
            self._written[it.sku] = _Written(it.desired, it.version,
                                             modified if isinstance(modified, str) else "")
            self._held.pop(it.sku, None)
            self.quantities_pushed += 1
            written.append((it, target))
        if written:
            await self._verify(parent, written, done)

    async def _verify(self, parent: int | None, written: Sequence[tuple[PushItem, _Target]],
                      done: Callable[..., None]) -> None:
        """Read back what was just written: a quantity that moved in between is a CONFLICT."""
        try:
            shown = await self._read_ids(parent, [t.product_id for _, t in written])
        except (TransientPushError, WooError) as exc:
            # the write itself succeeded: never retry it because a read failed
            log.warning("written, but the read-back failed (%s); webhooks and reconciliation "
                        "will tell", getattr(exc, "reason", exc), extra={"connector": self.name})
            for it, _target in written:
                done(it, PushStatus.OK)
            return
        for it, target in written:
            doc = shown.get(target.product_id)
            qty = _stock(doc) if doc is not None else None
            if doc is None:
                self._forget(it.sku)
                done(it, PushStatus.TRANSIENT, reason=_VANISHED)
            elif qty is None:
                done(it, PushStatus.TRANSIENT,
                     reason="WooCommerce stopped managing this product's stock during the write")
            elif qty == it.desired:
                done(it, PushStatus.OK)
            else:
                self.conflicts += 1
                self._observe(it.sku, qty)
                done(it, PushStatus.CONFLICT, remote=qty,
                     reason=f"WooCommerce shows {qty} right after syncd wrote {it.desired} "
                            "(a sale or an edit in between)")

    # -- reconciliation -------------------------------------------------------------------------

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        skus = sorted({sku for sku, loc in keys if loc == ""})
        docs: dict[str, dict[str, Any]] = {}
        unknown = [s for s in skus if s not in self._targets]
        if unknown:
            docs.update(await self._search(unknown))
        simple: dict[int, str] = {}
        by_search: list[str] = []
        by_parent: dict[int, dict[int, str]] = {}
        for sku in skus:
            target = self._targets.get(sku)
            if target is None or sku in docs:
                continue
            if target.parent_id is None:
                simple[target.product_id] = sku
            elif "," not in sku:
                by_search.append(sku)  # variations of many parents: one search, not N reads
            else:
                by_parent.setdefault(target.parent_id, {})[target.product_id] = sku
        if simple:
            for pid, doc in (await self._read_ids(None, sorted(simple))).items():
                docs[simple[pid]] = doc
        if by_search:
            docs.update(await self._search(by_search))
        for parent, members in by_parent.items():
            for pid, doc in (await self._read_ids(parent, sorted(members))).items():
                docs[members[pid]] = doc
        out: dict[tuple[str, str], int] = {}
        for sku, doc in docs.items():
            target = self._targets.get(sku)
            if target is None or _int_id(doc.get("id")) != target.product_id:
                continue
            qty = _stock(doc)
            if qty is not None:
                out[(sku, "")] = qty
                self._observe(sku, qty)
        return out

    # -- orders: polling ------------------------------------------------------------------------

    def events(self) -> AsyncIterator[Inbound]:
        return self._poll()

    async def _poll(self) -> AsyncIterator[Inbound]:
        channel = self._channel()
        if channel is None:
            log.warning("this WooCommerce connector serves no channel: orders are not polled",
                        extra={"connector": self.name})
            await self._closed.wait()
            return
        while not self._closed.is_set():
            try:
                if not self._scanned:
                    async for inbound in self._order_pass(channel, self._scan_params(), False):
                        yield inbound
                    self._scanned = True
                async for inbound in self._order_pass(channel, self._modified_params(), True):
                    yield inbound
                self.poll_ok = True
            except (TransientPushError, PermanentPushError) as exc:
                self.poll_ok = False
                log.warning("polling WooCommerce orders failed: %s", exc.reason,
                            extra={"connector": self.name})
            except WooError as exc:
                if self._orderby_modified and exc.status == 400 and "orderby" in exc.message:
                    log.info("this WooCommerce does not sort orders by modification; polling "
                             "without orderby", extra={"connector": self.name})
                    self._orderby_modified = False
                    continue
                self.poll_ok = False
                log.warning("polling WooCommerce orders failed: %s", exc,
                            extra={"connector": self.name})
            await self._idle(self.config.poll_every)

    def _scan_params(self) -> list[tuple[str, str]]:
        return [("status", ",".join(sorted(mapping.OPEN_STATUSES))), ("orderby", "id"),
                ("order", "asc"), ("per_page", str(PER_PAGE)), ("_fields", _ORDER_FIELDS)]

    def _modified_params(self) -> list[tuple[str, str]]:
        if self._hwm is None:
            self._hwm = time.time_ns() // 1000 - int(self.config.order_lookback * 1e6)
        params = [("modified_after", mapping.format_gmt(self._hwm - OVERLAP_US)),
                  ("dates_are_gmt", "true"), ("order", "asc"), ("per_page", str(PER_PAGE)),
                  ("_fields", _ORDER_FIELDS)]
        if self._orderby_modified:
            params.append(("orderby", "modified"))
        return params

    async def _order_pass(self, channel: Channel, first: list[tuple[str, str]],
                          advance: bool) -> AsyncIterator[Inbound]:
        """One walk over a collection of orders, one `Inbound` per page."""
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[bool]] = []
        ids: set[int] = set()
        torn = False
        newest: str | None = None
        params: list[tuple[str, str]] | None = first
        pages = 0
        while params is not None and pages < _MAX_PAGES:
            pages += 1
            resp = await self.client.request("GET", "orders", params=params)
            if not isinstance(resp.data, list):
                raise TransientPushError("WooCommerce answered the order list without a list")
            now = time.time_ns() // 1000
            events: list[Event] = []
            dead: list[DeadLetter] = []
            marks: list[tuple[int, str, str]] = []
            for order in resp.data:
                oid = _int_id(order.get("id")) if isinstance(order, dict) else None
                if oid is None or not isinstance(order, dict):
                    kept = mapping.strip_personal_data(order) if isinstance(order, dict) \
                        else order
                    payload = json.dumps(kept, sort_keys=True)[:2000].encode()
                    if payload not in self._dead_seen:  # once, not on every poll
                        if len(self._dead_seen) > 1000:
                            self._dead_seen.clear()
                        self._dead_seen.add(payload)
                        dead.append(DeadLetter(self.name, "an order without an id", payload,
                                               "poll orders"))
                    continue
                modified = order.get("date_modified_gmt")
                mod = modified if isinstance(modified, str) else ""
                torn = torn or oid in ids
                ids.add(oid)
                if mod and (newest is None or mod > newest):
                    newest = mod
                try:
                    evs, skipped = mapping.order_events(self.name, channel, order, now)
                except mapping.MappingError as exc:
                    reason = f"order {oid}: {exc}"[:500]
                    if self._delivered.get(oid, ("", ""))[1] != reason:
                        dead.append(DeadLetter(
                            self.name, reason,
                            json.dumps(mapping.strip_personal_data(order)).encode(),
                            "poll orders"))
                        marks.append((oid, mod, reason))
                    continue
                # an order is delivered again only when it stands for other events (a status
                # change), whatever else changed: modifications within one second included
                fingerprint = "\x1f".join(e.event_id for e in evs)
                if self._delivered.get(oid, ("", ""))[1] == fingerprint:
                    continue
                if skipped:
                    log.debug("order %s: %s", oid, "; ".join(skipped)[:300],
                              extra={"connector": self.name})
                self._note_orders(e.sku for e in evs if e.type is EventType.ORDER)
                events.extend(evs)
                marks.append((oid, mod, fingerprint))
            if events or dead:
                fut: asyncio.Future[bool] = loop.create_future()
                pending.append(fut)
                yield Inbound(events=events, dead=dead,
                              on_commit=self._committed(marks, fut),
                              on_failure=self._failed(fut))
            else:
                self._mark(marks)
            params = next_params(resp.headers)
        ok = await self._wait_commits(pending)
        self.passes += 1
        if not advance or self._hwm is None:
            return
        if ok and not torn and newest:
            with contextlib.suppress(mapping.MappingError):
                self._hwm = max(self._hwm, mapping.parse_gmt(newest))
        elif torn:
            log.info("orders changed while being paged: the pass is read again",
                     extra={"connector": self.name})
        cutoff = mapping.format_gmt(self._hwm - OVERLAP_US)
        self._delivered = {k: v for k, v in self._delivered.items() if v[0] >= cutoff}

    def _mark(self, marks: Iterable[tuple[int, str, str]]) -> None:
        for oid, mod, fingerprint in marks:
            self._delivered[oid] = (mod, fingerprint)

    def _committed(self, marks: list[tuple[int, str, str]],
                   fut: asyncio.Future[bool]) -> Callable[[], None]:
        def on_commit() -> None:
            self._mark(marks)
            if not fut.done():
                fut.set_result(True)
        return on_commit

    @staticmethod
    def _failed(fut: asyncio.Future[bool]) -> Callable[[BaseException], None]:
        def on_failure(exc: BaseException) -> None:
            if not fut.done():
                fut.set_result(False)
        return on_failure

    async def _wait_commits(self, pending: list[asyncio.Future[bool]]) -> bool:
        """Whether every page of the pass was committed (False when closing meanwhile)."""
        if not pending:
            return True
        gathered: asyncio.Future[Any] = asyncio.gather(*pending)
        closing: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
        try:
            finished, _ = await asyncio.wait({gathered, closing},
                                             return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if gathered not in finished:
            gathered.cancel()
            return False
        return all(gathered.result())

    # -- webhooks -------------------------------------------------------------------------------

    def _stale(self, level: mapping.Level) -> bool:
        """A product document older than syncd's last confirmed write of that SKU."""
        written = self._written.get(level.sku)
        return bool(written and written.modified and level.modified
                    and level.modified < written.modified)

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        lowered = {k.lower(): v for k, v in headers.items()
                   if isinstance(k, str) and isinstance(v, str)}
        if mapping.is_ping(body):
            return WebhookReply(200)  # unsigned test delivery when a webhook is saved
        if not mapping.verify_signature(self._secret, body,
                                        lowered.get("x-wc-webhook-signature")):
            return WebhookReply(401, error="bad_signature",
                                detail="X-WC-Webhook-Signature does not match the body")
        payload = mapping.parse_body(body)
        if payload is None:
            return WebhookReply(400, error="malformed", detail="the body is not a JSON object")
        topic = lowered.get("x-wc-webhook-topic", "").strip().lower()
        if topic not in mapping.ORDER_TOPICS and topic not in mapping.PRODUCT_TOPICS:
            return WebhookReply(200)  # acknowledged, not ours to act on
        origin = f"webhook {topic}"

        def dead(reason: str) -> WebhookReply:
            return WebhookReply(200, dead=[DeadLetter(self.name, reason[:500], body, origin)])

        channel = self._channel()
        if channel is None:
            return dead("this WooCommerce connector serves no channel")
        now = time.time_ns() // 1000
        try:
            if topic in mapping.ORDER_TOPICS:
                events, skipped = mapping.order_events(self.name, channel, payload, now)
                if skipped:
                    log.info("order lines skipped: %s", "; ".join(skipped)[:300],
                             extra={"connector": self.name})
                self._note_orders(e.sku for e in events if e.type is EventType.ORDER)
                return WebhookReply(200, events=events)
            level = mapping.product_level(payload)
        except mapping.MappingError as exc:
            return dead(f"{topic}: {exc}")
        if level is None:
            return WebhookReply(200)  # stock not managed on that product, or no SKU
        self._remember(level.sku, level.product_id, level.parent_id)
        if self._stale(level):
            return WebhookReply(200)  # superseded by syncd's own later write
        self._observe(level.sku, level.qty)
        return WebhookReply(200, events=[mapping.level_event(self.name, channel, level, now)])
