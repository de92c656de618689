"""The Vendure connector: stock levels out through the Admin GraphQL API, orders in by polling.

What syncd pushes, and why it is not "available"
------------------------------------------------

Vendure keeps, per product variant and per stock location, `stockOnHand` and `stockAllocated`.
When one of its own orders is placed it *allocates* the ordered units (`stockAllocated += q`,
at the first of the channel's stock locations with enough saleable stock:
`MultiChannelStockLocationStrategy`), and it sells what is left:

```
saleable(variant) = Σ over the channel's stock locations (stockOnHand − stockAllocated)
                    − outOfStockThreshold
```

syncd, too, turns a Vendure order into an `order` reservation (conflict rule 6), so that the other
channels stop selling those units. If syncd pushed `available` (on-hand minus *every*
reservation, the Vendure order's included) as `stockOnHand`, Vendure would subtract its own
allocation a second time and under-sell by the ordered quantity until the order ships. So this
connector declares `basis = "on_hand_less_foreign"`: for each location syncd computes

```
figure(sku, loc) = max(0, on_hand(sku, loc) − Σ reservations at loc held by OTHER channels)
```

(holds and the orders of other channels; never this channel's own orders, which Vendure already
counts in `stockAllocated`), and writes it as `stockOnHand` of the mapped Vendure stock location.
Example: Lyon holds 10, the webshop has an order reserving 2 there, a Vendure customer orders 3.
syncd writes `stockOnHand = 10 − 2 = 8` (before and after the Vendure order); Vendure shows
`stockAllocated = 3` and sells `8 − 3 = 5`, which is exactly what is free: 10 − 2 − 3.

It is also why the connector is `per_location = True`: Vendure allocates per stock location, so
each syncd location is written to its own stock location (`stock_locations`, or the channel's
`location_map` whose values are then Vendure stock location ids), never as one pooled figure.
A Vendure stock location takes one figure: a configuration that would send it two (two syncd
locations, or two channels of this connector selling one location) is refused before start.
Stock levels are not per Vendure channel, so two connectors writing one Vendure instance must
not share stock locations either (syncd cannot see that one: the connectors' URLs may differ).
Location and channel safety stocks and `allocation` do not apply on this basis (they would fight
Vendure's allocations); use Vendure's `outOfStockThreshold` for a safety margin. List the
channel's `sells_from` in the order of Vendure's stock locations, so that syncd reserves a
Vendure order where Vendure allocates it (both take the first location with enough stock).

Outbound (`push`), per call of at most `batch_size` items:

1. SKU → variant id: `productVariants(options: {filter: {sku: {in: [...]}}})`, paged, exact
   match, cached. A SKU missing from the cache is looked up again on every push that names it;
   still unknown: `PERMANENT` "unknown SKU on Vendure". A SKU on two variants is refused
   (`PERMANENT`), never guessed.
2. One `updateProductVariants(input: [{id, stockLevels: [{stockLocationId, stockOnHand}]}])` for
   the whole batch: one input per variant with all of its locations. Vendure records each change
   as a `StockAdjustment` movement. The answer carries the variants' stock levels, which are
   compared with what was asked (a different figure is a `CONFLICT` with `remote`).
3. Vendure runs the mutation in one transaction: one bad input fails all of it. Then each variant
   is written alone, so the failure stays with its item: `ENTITY_NOT_FOUND` (variant deleted) →
   the SKU is forgotten and looked up again (`TRANSIENT`); `USER_INPUT_ERROR` → `PERMANENT`;
   anything else → `TRANSIENT`.

Whole-call failures: 429/5xx/timeouts → `TransientPushError` (the pusher retries with backoff);
an expired or revoked session → logged in again and retried once (see `client.py`); refused
credentials or permissions → `PermanentPushError`. Stock locations are checked against Vendure's
`stockLocations` before writing: an unmapped or unknown one fails its items permanently instead
of failing the whole transaction.

Vendure has no compare-and-set. It changes `stockOnHand` itself only for its own orders (a
fulfillment records the sale; a cancellation or return with restock puts units back), which
syncd learns from polling; a write that lands between such a change and syncd's next poll
overwrites it with syncd's figure, and the next push after the poll corrects it.

Inbound (`events()`)
--------------------

Vendure has no webhooks of its own, so orders are polled every `poll_every`:

- *Changed orders*: `orders(options: {filter: {active: {eq: false}, _or: [{updatedAt: {after}},
  {orderPlacedAt: {after}}]}, sort: {updatedAt: ASC, id: ASC}})`, paged with `skip`/`take`.
  Both timestamps, because Vendure 3.7 does not always move `Order.updatedAt` when an order is
  placed or shipped (its state transition saves the order twice and the second save writes the
  old `updatedAt` back). The high-water mark (newest `updatedAt`/`orderPlacedAt` seen) lives in
  memory and advances only when every page of a pass is committed; each pass starts `OVERLAP`
  before it (SQLite keeps whole seconds; a transaction may commit after its timestamp). A pass
  that sees an order twice was torn by an order changed during paging: its mark does not advance.
- *Open orders*: every order syncd saw placed and not yet cancelled or wholly fulfilled is read
  again by id each pass (`filter: {id: {in: [...]}}`), because a fulfillment moves no timestamp
  that the poll can filter on.
- At start, one scan reads every placed order that is still open (state not `Cancelled`,
  `Shipped`, `Delivered`), and polling starts `order_lookback` (default 14 days, the daemon's
  default `order_reservation_max_age`) before the start, so orders placed, fulfilled or cancelled
  while syncd was down are applied.

`mapping.py` turns an order into events with deterministic ids. An order is delivered again only
when it stands for other events than the ones already committed for it, so overlaps and re-reads
cost nothing. Not tracked: a partial cancellation or modification that lowers the quantity of an
existing line (the reservation keeps the placed quantity until the order is fulfilled, cancelled
or ages out). The channel of every event is the first channel this connector serves: serve one
channel per Vendure connector.

Reconciliation: `read_levels` reads the variants' `stockLevels` (`stockOnHand` per mapped stock
location); the pusher compares them with what syncd last pushed every `reconcile_every` and
pushes again where they drifted (rule 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
from syncd.model import Channel, Event

from . import mapping
from .client import AdminClient, VendureError

__all__ = ["VendureConfig", "VendureConnector"]

log = logging.getLogger("connectors.vendure")

MAX_BATCH = 100  # variants per updateProductVariants: one transaction, kept short
PAGE = 100  # list page size (Vendure's default adminListQueryLimit is 1000)
OVERLAP_US = 5_000_000  # the changed-orders query starts this long before the mark
_SKU_CHUNK = 50  # SKUs per `sku: {in: [...]}` lookup
_ID_CHUNK = 100  # ids per `id: {in: [...]}` read
_MAX_PAGES = 10_000
_LOCATIONS_TTL = 60.0  # seconds before an unknown stock location id refreshes the list
_OPEN_EXCLUDED = ["Cancelled", "Shipped", "Delivered"]
_PERMANENT_CODES = frozenset(
    {"USER_INPUT_ERROR", "BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED"}
)
_GONE = "the variant is gone from Vendure; its SKU is looked up again"

_VARIANTS_BY_SKU = f"""
query SyncdVariantsBySku($options: ProductVariantListOptions) {{
  productVariants(options: $options) {{ totalItems items {{ {mapping.VARIANT_FIELDS} }} }}
}}
"""
_UPDATE = f"""
mutation SyncdSetStock($input: [UpdateProductVariantInput!]!) {{
  updateProductVariants(input: $input) {{ {mapping.VARIANT_FIELDS} }}
}}
"""
_STOCK_LOCATIONS = """
query SyncdStockLocations($options: StockLocationListOptions) {
  stockLocations(options: $options) { totalItems items { id name } }
}
"""
_ORDERS = f"""
query SyncdOrders($options: OrderListOptions) {{
  orders(options: $options) {{ totalItems items {{ {mapping.ORDER_FIELDS} }} }}
}}
"""


class VendureConfig(BaseModel):
    """`[connectors.<name>]` with `type = "vendure"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the Admin API endpoint, e.g. https://shop.example.com/admin-api (apiOptions.adminApiPath);
    # plain http only for a loopback server
    admin_api_url: str
    # an administrator's identifier and password (bearer sessions, tokenMethod 'bearer') ...
    username: str | None = None
    password: Secret | None = None
    # ... or an API key (Vendure >= 3.6, tokenMethod including 'api-key')
    api_key: Secret | None = None
    api_key_header: str = "vendure-api-key"  # authOptions.apiKeyHeaderKey
    auth_token_header: str = "vendure-auth-token"  # noqa: S105 (authOptions.authTokenHeaderKey)
    # the channel's token (sent as `vendure-token`); unset: Vendure's default channel
    channel_token: str | None = None
    # syncd location -> Vendure stock location id; a channel `location_map` whose values are
    # Vendure stock location ids works too
    stock_locations: dict[str, str] = Field(default_factory=dict)
    poll_every: PositiveDuration = 60.0  # order polling period
    timeout: PositiveDuration = 15.0  # per HTTP request
    # polling starts this long before the daemon's start (orders changed while it was down)
    order_lookback: Duration = 14 * 86_400.0
    batch_size: Annotated[int, Field(ge=1, le=1000)] = MAX_BATCH

    @field_validator("admin_api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return service_url(
            value,
            "admin_api_url",
            "https://shop.example.com/admin-api",
            https_reason="the password or API key travels with every request",
        )

    @field_validator("stock_locations")
    @classmethod
    def _check_locations(cls, value: dict[str, str]) -> dict[str, str]:
        for loc, ident in value.items():
            if not loc.strip() or not ident.strip() or not ident.isprintable():
                raise ValueError("stock location ids and location names must be non-empty")
        return {loc: ident.strip() for loc, ident in value.items()}

    @field_validator("api_key_header", "auth_token_header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("not an HTTP header name")
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> VendureConfig:
        login = self.username is not None or self.password is not None
        if self.api_key is not None and login:
            raise ValueError("give either username and password, or api_key, not both")
        if self.api_key is None and (self.username is None or self.password is None):
            raise ValueError("username and password (or api_key) are required")
        if self.username is not None and not self.username.strip():
            raise ValueError("username is empty")
        return self


def _chunks(values: Sequence[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield list(values[i : i + size])


class VendureConnector(HttpConnector):
    config_model: ClassVar[type[BaseModel]] = VendureConfig
    per_location = True
    basis = "on_hand_less_foreign"

    def __init__(
        self, name: str, config: VendureConfig, context: ConnectorContext, *, page_size: int = PAGE
    ) -> None:
        super().__init__(name, context)
        self.page_size = page_size  # orders and variants per list page
        self.config = config
        self.max_batch = config.batch_size
        self.client = AdminClient(
            self._session,
            config.admin_api_url,
            username=config.username,
            password=config.password,
            api_key=config.api_key,
            api_key_header=config.api_key_header,
            auth_token_header=config.auth_token_header,
            channel_token=config.channel_token,
            timeout=config.timeout,
        )
        self._variants: dict[str, list[str]] = {}  # sku -> variant ids (exact match)
        self._stock_locations: dict[str, str] | None = None  # Vendure id -> name
        self._locations_at = 0.0
        self._targets = self._location_targets()  # (channel, remote key) -> Vendure id
        # order polling
        self._hwm: int | None = None  # µs, newest updatedAt / orderPlacedAt committed
        self._delivered: dict[str, tuple[int, str]] = {}  # order id -> (mark, fingerprint)
        self._open: set[str] = set()  # placed orders not yet cancelled or wholly fulfilled
        self._scanned = False
        self._dead_seen: set[bytes] = set()
        self.poll_ok = True
        # counters (read by tests and operators)
        self.batch_requests = 0
        self.quantities_pushed = 0
        self.conflicts = 0
        self.passes = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in and check the stock locations (failures are logged and retried by the next
        push or poll); orders are polled by `events()`."""
        await super().start()
        if self._hwm is None:
            self._hwm = time.time_ns() // 1000 - int(self.config.order_lookback * 1e6)
        try:
            await self._locations(refresh=True)
        except (TransientPushError, PermanentPushError, VendureError) as exc:
            log.warning(
                "Vendure is not reachable yet: %s",
                getattr(exc, "reason", exc),
                extra={"connector": self.name},
            )

    @property
    def connected(self) -> bool:
        return self._started and self.client.ok and self.poll_ok

    @property
    def calls(self) -> int:
        return self.client.calls

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        return WebhookReply(
            404, error="not_found", detail="Vendure sends no webhooks; its orders are polled"
        )

    # -- stock locations ------------------------------------------------------------------------

    def _location_targets(self) -> dict[tuple[str, str], str]:
        """Where each figure of each served channel goes: (channel, channel-side key) → Vendure
        stock location id."""
        found, missing = mapping.location_targets(
            self.config.stock_locations, self.context.channels.values())
        for channel, loc in missing:
            log.warning(
                "location %s has no Vendure stock location (stock_locations): "
                "its figures cannot be pushed",
                loc,
                extra={"connector": self.name, "channel": channel},
            )
        return {(t.channel, t.remote): t.target for t in found}

    @classmethod
    def check_channels(
        cls, name: str, settings: BaseModel, channels: Mapping[str, Channel]
    ) -> list[str]:
        """Configuration errors (`parse_config`, before start): two figures sent to one Vendure
        stock location would overwrite each other's `stockOnHand` there."""
        assert isinstance(settings, VendureConfig)
        found, _ = mapping.location_targets(settings.stock_locations, channels.values())
        errors: list[str] = []
        for first, other in mapping.shared_targets(found):
            if other.channel != first.channel:
                errors.append(
                    f"channels.{other.channel}.connector: channel {other.channel!r} would write "
                    f"the figure of {other.location!r} to Vendure stock location {other.target!r}, "
                    f"which channel {first.channel!r} writes (the figure of {first.location!r}); "
                    "two channels of one Vendure connector would overwrite each other there")
                continue
            if other.remote == first.remote:  # one channel-side key twice: `location_map`'s own
                continue
            path = (f"connectors.{name}.stock_locations.{other.key}"
                    if other.via == "stock_locations"
                    else f"channels.{other.channel}.location_map.{other.key}")
            errors.append(
                f"{path}: Vendure stock location {other.target!r} already takes the figure of "
                f"{first.location!r} (channel {first.channel!r}); a stock location takes one "
                "figure")
        return list(dict.fromkeys(errors))  # one line per key path and cause

    def _target(self, channel: str, key: str) -> str | None:
        target = self._targets.get((channel, key))
        if target is None:
            target = self.config.stock_locations.get(key)
        return target

    async def _locations(self, refresh: bool = False) -> dict[str, str]:
        """Vendure's stock locations of the channel (id → name), read once and again when an
        id is missing (at most every `_LOCATIONS_TTL` seconds)."""
        now = time.monotonic()
        if self._stock_locations is not None and not (
            refresh and now - self._locations_at >= _LOCATIONS_TTL
        ):
            return self._stock_locations
        found: dict[str, str] = {}
        skip = 0
        for _ in range(_MAX_PAGES):
            data = await self.client.execute(
                _STOCK_LOCATIONS, {"options": {"take": self.page_size, "skip": skip}}
            )
            page = data.get("stockLocations") or {}
            items = page.get("items") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise TransientPushError("Vendure answered stockLocations without items")
            for doc in items:
                if isinstance(doc, dict) and doc.get("id") is not None:
                    found[str(doc["id"])] = str(doc.get("name", ""))
            skip += len(items)
            total = page.get("totalItems")
            if not items or not isinstance(total, int) or skip >= total:
                break
        first = self._stock_locations is None
        self._stock_locations = found
        self._locations_at = now
        if first:
            targets = set(self._targets.values()) | set(self.config.stock_locations.values())
            for ident in sorted(targets - set(found)):
                log.error(
                    "Vendure has no stock location %s in this channel: figures mapped to "
                    "it are refused",
                    ident,
                    extra={"connector": self.name},
                )
            for ident in sorted(set(found) - targets):
                log.warning(
                    "Vendure stock location %s (%s) is not mapped to a syncd location: "
                    "Vendure also sells the stock it holds",
                    ident,
                    found[ident],
                    extra={"connector": self.name},
                )
        return found

    # -- SKUs -----------------------------------------------------------------------------------

    async def _discover(self, skus: Iterable[str]) -> None:
        """Look SKUs up (exact match) and cache their variant ids; absent ones stay absent."""
        wanted = sorted(set(skus))
        for chunk in _chunks(wanted, _SKU_CHUNK):
            found: dict[str, list[str]] = {}
            skip = 0
            for _ in range(_MAX_PAGES):
                options = {
                    "take": self.page_size,
                    "skip": skip,
                    "filter": {"sku": {"in": chunk}},
                    "sort": {"id": "ASC"},
                }
                data = await self.client.execute(_VARIANTS_BY_SKU, {"options": options})
                items, total = self._page(data, "productVariants")
                for doc in items:
                    try:
                        variant = mapping.parse_variant(doc)
                    except mapping.MappingError:
                        continue
                    if variant.sku in chunk:
                        found.setdefault(variant.sku, []).append(variant.variant_id)
                skip += len(items)
                if not items or skip >= total:
                    break
            for sku in chunk:
                ids = found.get(sku)
                if ids:
                    self._variants[sku] = ids
                else:
                    self._variants.pop(sku, None)

    def _forget(self, sku: str) -> None:
        self._variants.pop(sku, None)

    @staticmethod
    def _page(data: Mapping[str, Any], field: str) -> tuple[list[Any], int]:
        page = data.get(field)
        items = page.get("items") if isinstance(page, dict) else None
        total = page.get("totalItems") if isinstance(page, dict) else None
        if not isinstance(items, list) or not isinstance(total, int):
            raise TransientPushError(f"Vendure answered {field} without items")
        return items, total

    # -- push -----------------------------------------------------------------------------------

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        results: dict[tuple[str, str], PushResult] = {}

        def done(
            it: PushItem, status: PushStatus, remote: int | None = None, reason: str = ""
        ) -> None:
            results[(it.sku, it.location)] = PushResult(
                it.sku, it.location, status, remote, reason[:500]
            )

        known = await self._locations()
        if any(
            t not in known
            for t in {self._target(channel, it.location) for it in items}
            if t is not None
        ):
            known = await self._locations(refresh=True)
        placed: list[tuple[PushItem, str]] = []
        for it in items:
            target = self._target(channel, it.location)
            if target is None:
                done(
                    it,
                    PushStatus.PERMANENT,
                    reason=f"location {it.location!r} has no Vendure stock location "
                    "(set stock_locations)",
                )
            elif target not in known:
                done(
                    it,
                    PushStatus.PERMANENT,
                    reason=f"Vendure has no stock location {target!r} in this channel",
                )
            else:
                placed.append((it, target))
        unknown = {it.sku for it, _ in placed if it.sku not in self._variants}
        if unknown:
            await self._discover(unknown)
        by_variant: dict[str, list[tuple[PushItem, str]]] = {}
        for it, target in placed:
            ids = self._variants.get(it.sku)
            if not ids:
                done(it, PushStatus.PERMANENT, reason="unknown SKU on Vendure")
            elif len(ids) > 1:
                done(
                    it,
                    PushStatus.PERMANENT,
                    reason=f"the SKU is on {len(ids)} Vendure variants ({', '.join(ids[:5])}); "
                    "make it unique",
                )
            else:
                by_variant.setdefault(ids[0], []).append((it, target))
        if by_variant:
            await self._write(by_variant, done, split=len(by_variant) > 1)
        return [
            results.get((it.sku, it.location))
            or PushResult(
                it.sku, it.location, PushStatus.TRANSIENT, reason="no result for this item"
            )
            for it in items
        ]

    async def _write(
        self,
        by_variant: Mapping[str, list[tuple[PushItem, str]]],
        done: Callable[..., None],
        *,
        split: bool,
    ) -> None:
        payload = [
            {
                "id": vid,
                "stockLevels": [
                    {"stockLocationId": target, "stockOnHand": it.desired} for it, target in group
                ],
            }
            for vid, group in by_variant.items()
        ]
        self.batch_requests += 1
        try:
            data = await self.client.execute(_UPDATE, {"input": payload})
        except VendureError as exc:
            if split:
                log.info(
                    "a batch of %d variants was refused (%s); writing them one by one",
                    len(by_variant),
                    exc,
                    extra={"connector": self.name},
                )
                await self._write_each(by_variant, done)
                return
            for it, _target in next(iter(by_variant.values())):
                if exc.code == "ENTITY_NOT_FOUND":
                    self._forget(it.sku)
                    done(it, PushStatus.TRANSIENT, reason=_GONE)
                elif exc.code in _PERMANENT_CODES:
                    done(it, PushStatus.PERMANENT, reason=f"Vendure refused it: {exc}")
                else:
                    done(it, PushStatus.TRANSIENT, reason=f"Vendure failed: {exc}")
            return
        answer = data.get("updateProductVariants")
        shown: dict[str, mapping.Variant] = {}
        for doc in answer if isinstance(answer, list) else []:
            with contextlib.suppress(mapping.MappingError):
                parsed = mapping.parse_variant(doc)
                shown[parsed.variant_id] = parsed
        for vid, group in by_variant.items():
            variant = shown.get(vid)
            for it, target in group:
                level = variant.levels.get(target) if variant is not None else None
                if variant is None:
                    self._forget(it.sku)
                    done(it, PushStatus.TRANSIENT, reason=_GONE)
                elif level is None:
                    done(
                        it,
                        PushStatus.TRANSIENT,
                        reason=f"Vendure shows no stock level at stock location {target}",
                    )
                elif level.on_hand == it.desired:
                    self.quantities_pushed += 1
                    done(it, PushStatus.OK)
                else:
                    self.conflicts += 1
                    done(
                        it,
                        PushStatus.CONFLICT,
                        remote=level.on_hand,
                        reason=f"Vendure shows {level.on_hand} right after syncd wrote "
                        f"{it.desired}",
                    )

    async def _write_each(
        self, by_variant: Mapping[str, list[tuple[PushItem, str]]], done: Callable[..., None]
    ) -> None:
        pending = list(by_variant.items())
        for i, (vid, group) in enumerate(pending):
            try:
                await self._write({vid: group}, done, split=False)
            except TransientPushError as exc:
                # what was written settles; the rest is retried item by item
                for _vid, rest in pending[i:]:
                    for it, _target in rest:
                        done(it, PushStatus.TRANSIENT, reason=exc.reason)
                return

    # -- reconciliation -------------------------------------------------------------------------

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """`stockOnHand` of each `(sku, channel-side location)`, from the variants' stock
        levels."""
        skus = sorted({sku for sku, _ in keys})
        unknown = [s for s in skus if s not in self._variants]
        if unknown:
            await self._discover(unknown)
        ids = sorted({self._variants[s][0] for s in skus if len(self._variants.get(s, [])) == 1})
        variants: dict[str, mapping.Variant] = {}
        for chunk in _chunks(ids, _ID_CHUNK):
            options = {"take": len(chunk), "filter": {"id": {"in": chunk}}}
            data = await self.client.execute(_VARIANTS_BY_SKU, {"options": options})
            items, _total = self._page(data, "productVariants")
            for doc in items:
                with contextlib.suppress(mapping.MappingError):
                    parsed = mapping.parse_variant(doc)
                    variants[parsed.variant_id] = parsed
        out: dict[tuple[str, str], int] = {}
        for sku, key in keys:
            ids_of = self._variants.get(sku, [])
            target = self._target(channel, key)
            variant = variants.get(ids_of[0]) if len(ids_of) == 1 else None
            if variant is None or target is None:
                continue
            if variant.sku != sku:  # the SKU was changed in Vendure: look it up again
                self._forget(sku)
                continue
            level = variant.levels.get(target)
            if level is not None:
                out[(sku, key)] = level.on_hand
        return out

    # -- orders ---------------------------------------------------------------------------------

    def events(self) -> AsyncIterator[Inbound]:
        return self._poll()

    async def _poll(self) -> AsyncIterator[Inbound]:
        channel = self._channel()
        if channel is None:
            log.warning(
                "this Vendure connector serves no channel: orders are not polled",
                extra={"connector": self.name},
            )
            await self._closed.wait()
            return
        while not self._closed.is_set():
            try:
                if not self._scanned:
                    scan = _Pass()
                    async for inbound in self._order_pass(channel, self._scan_options, scan):
                        yield inbound
                    self._scanned = scan.ok and not scan.torn
                changed = _Pass()
                async for inbound in self._order_pass(channel, self._changed_options, changed):
                    yield inbound
                self._advance(changed)
                async for inbound in self._recheck(channel, changed.seen):
                    yield inbound
                self.poll_ok = True
            except (TransientPushError, PermanentPushError) as exc:
                self.poll_ok = False
                log.warning(
                    "polling Vendure orders failed: %s", exc.reason, extra={"connector": self.name}
                )
            except VendureError as exc:
                self.poll_ok = False
                log.warning(
                    "polling Vendure orders failed: %s", exc, extra={"connector": self.name}
                )
            self.passes += 1
            await self._idle(self.config.poll_every)

    def _scan_options(self, skip: int) -> dict[str, Any]:
        return {
            "take": self.page_size,
            "skip": skip,
            "filter": {"orderPlacedAt": {"isNull": False}, "state": {"notIn": _OPEN_EXCLUDED}},
            "sort": {"orderPlacedAt": "ASC", "id": "ASC"},
        }

    def _changed_options(self, skip: int) -> dict[str, Any]:
        if self._hwm is None:
            self._hwm = time.time_ns() // 1000 - int(self.config.order_lookback * 1e6)
        after = mapping.format_datetime(self._hwm - OVERLAP_US)
        return {
            "take": self.page_size,
            "skip": skip,
            "filter": {
                "active": {"eq": False},
                "_or": [{"updatedAt": {"after": after}}, {"orderPlacedAt": {"after": after}}],
            },
            "sort": {"updatedAt": "ASC", "id": "ASC"},
        }

    async def _order_pass(
        self, channel: Channel, options: Callable[[int], dict[str, Any]], state: _Pass
    ) -> AsyncIterator[Inbound]:
        """One walk over a list of orders, one `Inbound` per page with something new."""
        skip = 0
        first_total: int | None = None
        for _ in range(_MAX_PAGES):
            data = await self.client.execute(_ORDERS, {"options": options(skip)})
            items, total = self._page(data, "orders")
            if first_total is None:
                first_total = total
            elif total < first_total:
                state.torn = True  # an order left the list while it was paged
            inbound = self._map_page(channel, items, state)
            if inbound is not None:
                yield inbound
            skip += len(items)
            if not items or skip >= total:
                break
        await state.wait(self._closed)

    async def _recheck(self, channel: Channel, seen: set[str]) -> AsyncIterator[Inbound]:
        """Read the open orders the changed-orders query did not return (a fulfillment moves
        no timestamp it can filter on)."""
        ids = sorted(self._open - seen)
        state = _Pass()
        returned: set[str] = set()
        for chunk in _chunks(ids, _ID_CHUNK):
            options = {"take": len(chunk), "filter": {"id": {"in": chunk}}}
            data = await self.client.execute(_ORDERS, {"options": options})
            items, _total = self._page(data, "orders")
            returned.update(str(d.get("id")) for d in items if isinstance(d, dict))
            inbound = self._map_page(channel, items, state)
            if inbound is not None:
                yield inbound
        await state.wait(self._closed)
        for oid in set(ids) - returned:  # gone from Vendure (or from this channel)
            self._open.discard(oid)

    def _map_page(self, channel: Channel, items: list[Any], state: _Pass) -> Inbound | None:
        now = time.time_ns() // 1000
        events: list[Event] = []
        dead: list[DeadLetter] = []
        marks: list[tuple[str, int, str, bool]] = []
        for order in items:
            try:
                oid = mapping.order_id(order) if isinstance(order, dict) else None
            except mapping.MappingError:
                oid = None
            if oid is None or not isinstance(order, dict):
                payload = json.dumps(order, sort_keys=True, default=str)[:2000].encode()
                if payload not in self._dead_seen:
                    if len(self._dead_seen) > 1000:
                        self._dead_seen.clear()
                    self._dead_seen.add(payload)
                    dead.append(
                        DeadLetter(self.name, "an order without an id", payload, "poll orders")
                    )
                continue
            times = mapping.order_marks(order)
            mark = max(times) if times else 0
            state.torn = state.torn or oid in state.seen
            state.seen.add(oid)
            if times:
                state.newest = max(state.newest or mark, mark)
            try:
                evs, skipped = mapping.order_events(self.name, channel, order, now)
            except mapping.MappingError as exc:
                reason = f"order {oid}: {exc}"[:500]
                if self._delivered.get(oid, (0, ""))[1] != reason:
                    dead.append(
                        DeadLetter(
                            self.name,
                            reason,
                            json.dumps(order, default=str).encode(),
                            "poll orders",
                        )
                    )
                    marks.append((oid, mark, reason, False))
                continue
            fingerprint = "\x1f".join(e.event_id for e in evs)
            if self._delivered.get(oid, (0, ""))[1] == fingerprint:
                continue
            if skipped:
                log.debug(
                    "order %s: %s", oid, "; ".join(skipped)[:300], extra={"connector": self.name}
                )
            events.extend(evs)
            marks.append((oid, mark, fingerprint, mapping.is_open(evs)))
        if not events and not dead:
            self._mark(marks)
            return None
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        state.pending.append(fut)
        return Inbound(
            events=events,
            dead=dead,
            on_commit=self._committed(marks, fut),
            on_failure=self._failed(fut),
        )

    def _mark(self, marks: Iterable[tuple[str, int, str, bool]]) -> None:
        for oid, mark, fingerprint, still_open in marks:
            self._delivered[oid] = (mark, fingerprint)
            if still_open:
                self._open.add(oid)
            else:
                self._open.discard(oid)

    def _committed(
        self, marks: list[tuple[str, int, str, bool]], fut: asyncio.Future[bool]
    ) -> Callable[[], None]:
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

    def _advance(self, changed: _Pass) -> None:
        if self._hwm is None:
            return
        if changed.ok and not changed.torn and changed.newest is not None:
            self._hwm = max(self._hwm, changed.newest)
        elif changed.torn:
            log.info(
                "orders changed while being paged: the pass is read again",
                extra={"connector": self.name},
            )
        cutoff = self._hwm - OVERLAP_US
        self._delivered = {
            k: v for k, v in self._delivered.items() if k in self._open or v[0] >= cutoff
        }


class _Pass:
    """What one walk over a list of orders saw, and whether all of it was committed."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.torn = False
        self.newest: int | None = None
        self.pending: list[asyncio.Future[bool]] = []
        self.ok = True

    async def wait(self, closed: asyncio.Event) -> None:
        """Wait until every page handed out was committed (or failed, or the connector
        closes)."""
        if not self.pending:
            return
        gathered: asyncio.Future[Any] = asyncio.gather(*self.pending)
        closing: asyncio.Future[Any] = asyncio.ensure_future(closed.wait())
        try:
            finished, _ = await asyncio.wait(
                {gathered, closing}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closing.cancel()
        if gathered not in finished:
            gathered.cancel()
            self.ok = False
            return
        self.ok = self.ok and all(gathered.result())
