"""The Shopify connector: availability out through the Admin GraphQL API, orders and level
changes in through webhooks.

Outbound (`push`), per call of at most 250 items:

1. SKU → inventory item. Shopify has no lookup by SKU, so SKUs are found with the `inventoryItems`
   connection filtered by a search query (`sku:"A" OR sku:"B" …`, up to 250 per page) and cached
   both ways. An unknown SKU is looked up again on every push that names it (the merchant may have
   created the product since); still unknown, it is a permanent failure "unknown SKU on Shopify".
2. Location: the pooled figure (`location == ""`) goes to `location_id`; a channel with a
   `location_map` already names Shopify location gids.
3. Compare-and-set: `changeFromQuantity` is the quantity syncd last saw on Shopify (`remote`).
   When syncd has never seen it, the current quantity is read first (on a cold SKU this rides
   along with step 1's query).
4. One `inventorySetQuantities` mutation (`name: "available"`, `reason: "correction"`) with
   `@idempotent(key:)`, a UUID derived from the items' idempotency keys and the exact quantities
   sent: a retry of the same call replays Shopify's stored result instead of applying twice, and
   a different call never reuses a key (which Shopify refuses as a parameter mismatch).
5. `userErrors`: `CHANGE_FROM_QUANTITY_STALE` means someone else changed the quantity: its current
   value is read and returned as `CONFLICT` (`remote` = current), and the pusher tries again from
   there. Other errors on one quantity are permanent for that item. The mutation is treated as
   all-or-nothing: when it answers errors without an adjustment group, nothing was applied and the
   remaining items are sent again at once under their own key; should Shopify ever apply the valid
   part (an adjustment group next to the errors), the remaining items are `OK` as they are.

Every call is paced by the cost bucket (`client.py`), so a steady state is never throttled.

Inbound: webhooks only (`events()` yields nothing). See `mapping.py` for topics and event ids.
The channel of an order or a level is the first channel this connector serves
(`context.channels`); serve one channel per Shopify connector.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

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
from syncd.config import PositiveDuration, Secret
from syncd.model import Event

from . import mapping
from .client import GraphQLClient

__all__ = ["ShopifyConfig", "ShopifyConnector"]

log = logging.getLogger("connectors.shopify")

_LOCATION_GID = re.compile(r"gid://shopify/Location/[0-9]+")
_API_VERSION = re.compile(r"[0-9]{4}-(01|04|07|10)|unstable")
_NOT_STOCKED = -(2**62)  # marker: the item is not stocked at that location
_LEVEL_COST = 3  # per item: the item, its inventoryLevel, the quantities list
_FIND_PAGES = 4  # pages of fuzzy search matches followed per chunk of SKUs
_LOOKUP_TIMEOUT = 3.0  # a webhook waits at most this long to learn an item's SKU
_VANISHED = "the inventory item is gone from Shopify; its SKU is looked up again"

_SET_QUANTITIES = """\
mutation SyncdSetAvailable($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) @idempotent(key: "%s") {
    inventoryAdjustmentGroup { id }
    userErrors { code field message }
  }
}"""

_FIND_ITEMS = """\
query SyncdFindItems($first: Int!, $after: String, $query: String!) {
  inventoryItems(first: $first, after: $after, query: $query) {
    nodes { id sku }
    pageInfo { hasNextPage endCursor }
  }
}"""

_FIND_ITEMS_AT = """\
query SyncdFindItemsAt($first: Int!, $after: String, $query: String!, $location: ID!) {
  inventoryItems(first: $first, after: $after, query: $query) {
    nodes {
      id sku
      inventoryLevel(locationId: $location) { quantities(names: ["available"]) { name quantity } }
    }
    pageInfo { hasNextPage endCursor }
  }
}"""

_ITEM_SKUS = """\
query SyncdItemSkus($ids: [ID!]!) {
  nodes(ids: $ids) { ... on InventoryItem { id sku } }
}"""


class ShopifyConfig(BaseModel):
    """`[connectors.<name>]` with `type = "shopify"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # https://<shop>.myshopify.com; requests go to {shop_url}/admin/api/{api_version}/graphql.json.
    # Plain http is accepted for loopback addresses only (the simulator).
    shop_url: str
    api_version: str = "2026-04"
    access_token: Secret  # sent as X-Shopify-Access-Token
    webhook_secret: Secret  # the app's client secret: key of X-Shopify-Hmac-SHA256
    location_id: str  # where pooled availability is set (channels without a location_map)
    timeout: PositiveDuration = 10.0

    @field_validator("shop_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return service_url(value, "shop_url", "https://example.myshopify.com")

    @field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _API_VERSION.fullmatch(value):
            raise ValueError('expected a Shopify API version like "2026-04"')
        return value

    @field_validator("location_id")
    @classmethod
    def _check_location(cls, value: str) -> str:
        if not _LOCATION_GID.fullmatch(value):
            raise ValueError('expected a location gid like "gid://shopify/Location/1"')
        return value

    @property
    def endpoint(self) -> str:
        return f"{self.shop_url}/admin/api/{self.api_version}/graphql.json"


@dataclass(slots=True)
class _Target:
    item: PushItem
    gid: str  # inventory item
    location: str  # location gid
    change_from: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.item.sku, self.item.location)


def _search_term(sku: str) -> str:
    escaped = sku.replace("\\", "\\\\").replace('"', '\\"')
    return f'sku:"{escaped}"'


def _available(level: Any) -> int:
    """The `available` quantity of an `inventoryLevel` node, or `_NOT_STOCKED` when null."""
    if not isinstance(level, dict):
        return _NOT_STOCKED
    for q in level.get("quantities") or ():
        if isinstance(q, dict) and q.get("name") == "available" and isinstance(
            q.get("quantity"), int
        ):
            return int(q["quantity"])
    return _NOT_STOCKED


def _quantity_index(path: Any) -> int | None:
    """The index of `input.quantities[i]` an error's `field` path names, if any."""
    if not isinstance(path, list):
        return None
    for i, part in enumerate(path[:-1]):
        if part == "quantities":
            nxt = path[i + 1]
            if isinstance(nxt, int):
                return nxt
            if isinstance(nxt, str) and nxt.isdigit():
                return int(nxt)
    return None


class ShopifyConnector(HttpConnector):
    config_model: ClassVar[type[BaseModel]] = ShopifyConfig
    max_batch = 250  # Shopify: "input arguments that accept an array have a maximum size of 250"

    def __init__(self, name: str, config: ShopifyConfig, context: ConnectorContext) -> None:
        super().__init__(name, context)
        self.config = config
        self.client = GraphQLClient(self._session, config.endpoint, config.access_token,
                                    config.timeout)
        self._secret = config.webhook_secret.get_secret_value().encode()
        self._items: dict[str, str] = {}  # sku -> inventory item gid
        self._skus: dict[str, str] = {}  # inventory item gid -> sku
        self.quantities_pushed = 0
        self.mutations = 0

    # -- lifecycle ------------------------------------------------------------------------------

    # `start` is HttpConnector's: nothing to connect, the SKU cache fills on the first pushes

    @property
    def connected(self) -> bool:
        return self._started and self.client.ok

    @property
    def calls(self) -> int:
        return self.client.calls

    @property
    def throttled_calls(self) -> int:
        return self.client.throttled_calls

    def events(self) -> AsyncIterator[Inbound]:
        return self._no_events()

    async def _no_events(self) -> AsyncIterator[Inbound]:
        await self._closed.wait()  # everything inbound arrives as webhooks
        nothing: tuple[Inbound, ...] = ()
        for inbound in nothing:
            yield inbound

    # -- SKUs and levels ------------------------------------------------------------------------

    def _remember(self, sku: str, gid: str) -> None:
        known = self._items.get(sku)
        if known is not None and known != gid:
            log.warning("SKU is on several Shopify inventory items; using the first found",
                        extra={"connector": self.name})
            return
        self._items[sku] = gid
        self._skus[gid] = sku

    def _forget(self, gid: str) -> None:
        """An inventory item Shopify no longer has (product deleted, re-created): its SKU is
        looked up again on the next push."""
        sku = self._skus.pop(gid, None)
        if sku is not None and self._items.get(sku) == gid:
            del self._items[sku]

    async def _discover(
        self, skus: Iterable[str], location: str | None = None
    ) -> dict[tuple[str, str], int]:
        """Find the inventory items of `skus`. With `location`, also return their `available`
        there ({(item gid, location): qty or _NOT_STOCKED})."""
        wanted = sorted(set(skus))
        levels: dict[tuple[str, str], int] = {}
        per_item = _LEVEL_COST if location else 1
        i = 0
        while i < len(wanted):
            size = max(1, min(250, (self.client.max_cost() - 2) // per_item))
            chunk = wanted[i : i + size]
            i += len(chunk)
            search = " OR ".join(_search_term(s) for s in chunk)
            after: str | None = None
            for _ in range(_FIND_PAGES):
                variables: dict[str, Any] = {"first": len(chunk), "after": after,
                                             "query": search}
                if location:
                    variables["location"] = location
                    data = await self.client.execute(
                        _FIND_ITEMS_AT, variables, cost=2 + per_item * len(chunk),
                        operation="SyncdFindItemsAt")
                else:
                    data = await self.client.execute(
                        _FIND_ITEMS, variables, cost=2 + len(chunk), operation="SyncdFindItems")
                conn = data.get("inventoryItems") or {}
                for node in conn.get("nodes") or ():
                    if not isinstance(node, dict):
                        continue
                    gid, sku = node.get("id"), node.get("sku")
                    if isinstance(gid, str) and isinstance(sku, str) and sku:
                        self._remember(sku, gid)
                        if location and self._items.get(sku) == gid:
                            levels[(gid, location)] = _available(node.get("inventoryLevel"))
                page = conn.get("pageInfo") or {}
                # the search is fuzzy: stop once every SKU of the chunk is known
                if not page.get("hasNextPage") or all(s in self._items for s in chunk):
                    break
                after = page.get("endCursor")
        return levels

    async def _read(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """`available` of (item gid, location gid) pairs: {pair: qty or _NOT_STOCKED}."""
        out: dict[tuple[str, str], int] = {}
        todo = sorted(set(pairs), key=lambda p: (p[1], p[0]))
        i = 0
        while i < len(todo):
            size = max(1, min(250, self.client.max_cost() // _LEVEL_COST))
            chunk = todo[i : i + size]
            i += len(chunk)
            groups: dict[str, list[str]] = {}
            for gid, loc in chunk:
                groups.setdefault(loc, []).append(gid)
            decls: list[str] = []
            fields: list[str] = []
            variables: dict[str, Any] = {}
            for n, (loc, gids) in enumerate(groups.items()):
                decls.append(f"$i{n}: [ID!]!, $l{n}: ID!")
                fields.append(
                    f"g{n}: nodes(ids: $i{n}) {{ ... on InventoryItem {{ id "
                    f"inventoryLevel(locationId: $l{n}) {{ "
                    f'quantities(names: ["available"]) {{ name quantity }} }} }} }}'
                )
                variables[f"i{n}"] = gids
                variables[f"l{n}"] = loc
            query = f"query SyncdLevels({', '.join(decls)}) {{\n  " + "\n  ".join(fields) + "\n}"
            data = await self.client.execute(query, variables, cost=_LEVEL_COST * len(chunk),
                                              operation="SyncdLevels")
            for n, (loc, gids) in enumerate(groups.items()):
                nodes = data.get(f"g{n}")
                if not isinstance(nodes, list):
                    continue
                for gid, node in zip(gids, nodes, strict=False):
                    if isinstance(node, dict) and node.get("id") == gid:
                        out[(gid, loc)] = _available(node.get("inventoryLevel"))
                    elif node is None:
                        self._forget(gid)
        return out

    async def _lookup_skus(self, gids: Sequence[str]) -> None:
        """Learn the SKUs of inventory items by id (a webhook naming an item not seen yet)."""
        if self._session() is None:
            return
        data = await self.client.execute(_ITEM_SKUS, {"ids": list(gids)}, cost=len(gids),
                                          operation="SyncdItemSkus")
        for node in data.get("nodes") or ():
            if isinstance(node, dict):
                gid, sku = node.get("id"), node.get("sku")
                if isinstance(gid, str) and isinstance(sku, str) and sku:
                    self._remember(sku, gid)

    def _location(self, key: str) -> str | None:
        if key == "":
            return self.config.location_id
        return key if _LOCATION_GID.fullmatch(key) else None

    # -- push -----------------------------------------------------------------------------------

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        results: dict[tuple[str, str], PushResult] = {}

        def done(it: PushItem, status: PushStatus, remote: int | None = None,
                 reason: str = "") -> None:
            results[(it.sku, it.location)] = PushResult(it.sku, it.location, status, remote,
                                                        reason)

        live: list[tuple[PushItem, str]] = []
        for it in items:
            loc = self._location(it.location)
            if loc is None:
                done(it, PushStatus.PERMANENT, reason=f"not a Shopify location id: {it.location!r}")
            elif it.desired < 0:
                done(it, PushStatus.PERMANENT, reason="negative quantity")
            else:
                live.append((it, loc))

        # 1. SKUs -> inventory items (a cold SKU's current level comes along when possible)
        levels: dict[tuple[str, str], int] = {}
        unknown = {it.sku for it, _ in live if it.sku not in self._items}
        if unknown:
            cold_locs = {loc for it, loc in live if it.sku in unknown and it.remote is None}
            at = next(iter(cold_locs)) if len(cold_locs) == 1 else None
            levels = await self._discover(unknown, at)
        known: list[tuple[PushItem, str, str]] = []
        for it, loc in live:
            gid = self._items.get(it.sku)
            if gid is None:
                done(it, PushStatus.PERMANENT, reason="unknown SKU on Shopify")
            else:
                known.append((it, gid, loc))

        # 2. compare-from values syncd has never seen
        missing = [(gid, loc) for it, gid, loc in known
                   if it.remote is None and (gid, loc) not in levels]
        if missing:
            levels.update(await self._read(missing))
        targets: list[_Target] = []
        for it, gid, loc in known:
            change_from = it.remote if it.remote is not None else levels.get((gid, loc))
            if gid not in self._skus:
                done(it, PushStatus.TRANSIENT, reason=_VANISHED)
            elif change_from is None or change_from == _NOT_STOCKED:
                done(it, PushStatus.PERMANENT,
                     reason=f"inventory item not stocked at {loc} on Shopify")
            else:
                targets.append(_Target(it, gid, loc, change_from))

        # 3. set the quantities (compare-and-set, idempotent)
        if targets:
            await self._set(channel, targets, done)
        return [results[(it.sku, it.location)] for it in items]

    @staticmethod
    def _mutation_key(targets: Sequence[_Target]) -> str:
        """Same items, versions and quantities -> same key; anything else -> another key."""
        h = hashlib.sha256()
        for t in targets:
            h.update(f"{t.item.idempotency_key}\x1f{t.gid}\x1f{t.location}\x1f"
                     f"{t.item.desired}\x1f{t.change_from}\x1e".encode())
        return str(uuid.UUID(bytes=h.digest()[:16], version=4))

    async def _set(self, channel: str, targets: list[_Target], done: Any) -> None:
        pending = sorted(targets, key=lambda t: (t.gid, t.location))
        stale: list[_Target] = []
        while pending:
            key = self._mutation_key(pending)
            variables = {"input": {
                "name": "available",
                "reason": "correction",
                "referenceDocumentUri": f"syncd://availability/{quote(channel, safe='')}",
                "quantities": [
                    {"inventoryItemId": t.gid, "locationId": t.location,
                     "quantity": t.item.desired, "changeFromQuantity": t.change_from}
                    for t in pending
                ],
            }}
            data = await self.client.execute(_SET_QUANTITIES % key, variables, cost=10,
                                              operation="SyncdSetAvailable")
            self.mutations += 1
            payload = data.get("inventorySetQuantities")
            if not isinstance(payload, dict):
                raise TransientPushError("inventorySetQuantities answered without a payload")
            errors = [e for e in payload.get("userErrors") or () if isinstance(e, dict)]
            applied = payload.get("inventoryAdjustmentGroup") is not None
            if not errors:
                for t in pending:
                    done(t.item, PushStatus.OK)
                self.quantities_pushed += len(pending)
                break
            by_index: dict[int, list[dict[str, Any]]] = {}
            general: list[dict[str, Any]] = []
            for err in errors:
                idx = _quantity_index(err.get("field"))
                if idx is not None and 0 <= idx < len(pending):
                    by_index.setdefault(idx, []).append(err)
                else:
                    general.append(err)
            if general:
                codes = {str(e.get("code")) for e in general}
                text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in general)[:300]
                if "IDEMPOTENCY_CONCURRENT_REQUEST" in codes:
                    raise TransientPushError(f"Shopify: {text}", 1.0)
                for t in pending:
                    done(t.item, PushStatus.PERMANENT, reason=f"Shopify refused: {text}")
                break
            rest: list[_Target] = []
            for i, t in enumerate(pending):
                errs = by_index.get(i)
                if not errs:
                    rest.append(t)
                elif any(e.get("code") == "CHANGE_FROM_QUANTITY_STALE" for e in errs):
                    stale.append(t)
                elif any(e.get("code") == "INVALID_INVENTORY_ITEM" for e in errs):
                    self._forget(t.gid)
                    done(t.item, PushStatus.TRANSIENT, reason=_VANISHED)
                else:
                    text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)
                    done(t.item, PushStatus.PERMANENT, reason=f"Shopify refused: {text}"[:300])
            if applied:  # the valid part was applied despite the errors
                for t in rest:
                    done(t.item, PushStatus.OK)
                self.quantities_pushed += len(rest)
                break
            pending = rest  # nothing applied: send the rest again, under its own key
        if stale:
            current = await self._read([(t.gid, t.location) for t in stale])
            for t in stale:
                now = current.get((t.gid, t.location))
                if now is None or now == _NOT_STOCKED:
                    done(t.item, PushStatus.PERMANENT,
                         reason=f"inventory item not stocked at {t.location} on Shopify")
                elif now == t.item.desired:
                    done(t.item, PushStatus.OK)  # someone set exactly what we wanted
                else:
                    done(t.item, PushStatus.CONFLICT, remote=now,
                         reason=f"Shopify shows {now}, not {t.change_from}")

    # -- reconciliation -------------------------------------------------------------------------

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        located = [(sku, key, loc) for sku, key in keys
                   if (loc := self._location(key)) is not None]
        unknown = {sku for sku, _, _ in located if sku not in self._items}
        levels: dict[tuple[str, str], int] = {}
        if unknown:  # one location (a pooled channel): the levels come with the discovery
            locs = {loc for sku, _, loc in located if sku in unknown}
            levels = await self._discover(unknown, next(iter(locs)) if len(locs) == 1 else None)
        pairs = {(sku, key): (gid, loc) for sku, key, loc in located
                 if (gid := self._items.get(sku)) is not None}
        need = [pair for pair in pairs.values() if pair not in levels]
        if need:
            levels.update(await self._read(need))
        out: dict[tuple[str, str], int] = {}
        for k, pair in pairs.items():
            qty = levels.get(pair)
            if qty is not None and qty != _NOT_STOCKED:
                out[k] = qty
        return out

    # -- webhooks -------------------------------------------------------------------------------

    def _other_shop(self, domain: str) -> bool:
        """A delivery signed with our secret but for another shop the same app is installed on."""
        host = (urlsplit(self.config.shop_url).hostname or "").lower()
        return bool(domain) and host.endswith(".myshopify.com") and domain != host

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        lowered = {k.lower(): v for k, v in headers.items()
                   if isinstance(k, str) and isinstance(v, str)}
        if not mapping.verify_signature(self._secret, body,
                                        lowered.get("x-shopify-hmac-sha256")):
            return WebhookReply(401, error="bad_signature",
                                detail="X-Shopify-Hmac-SHA256 does not match the body")
        payload = mapping.parse_body(body)
        if payload is None:
            return WebhookReply(400, error="malformed", detail="the body is not a JSON object")
        delivery = mapping.read_delivery(lowered, body)
        topic = delivery.topic
        if topic not in mapping.TOPICS:
            return WebhookReply(200)  # acknowledged, not ours to act on
        if self._other_shop(delivery.shop_domain):
            log.warning("webhook for another shop ignored", extra={"connector": self.name})
            return WebhookReply(200)
        origin = f"webhook {topic}"

        def dead(reason: str) -> WebhookReply:
            return WebhookReply(200, dead=[DeadLetter(self.name, reason[:500], body, origin)])

        channel = self._channel()
        if channel is None:
            return dead("this Shopify connector serves no channel")
        now = time.time_ns() // 1000
        try:
            events: list[Event]
            if topic == "orders/create":
                events, skipped = mapping.order_events(self.name, channel, delivery, payload, now)
                if skipped:
                    log.info("order lines skipped: %s", "; ".join(skipped)[:300],
                             extra={"connector": self.name})
            elif topic == "orders/cancelled":
                events = [mapping.order_cancelled_event(self.name, channel, delivery, payload,
                                                        now)]
            elif topic == "orders/fulfilled":
                events = [mapping.order_fulfilled_event(self.name, channel, delivery, payload,
                                                        now)]
            else:  # inventory_levels/update
                target = mapping.level_target(channel, self.config.location_id, payload)
                if target is None:
                    return WebhookReply(200)  # a location or item this channel does not publish
                gid, remote_location, available = target
                sku = self._skus.get(gid)
                if sku is None:
                    sku = await self._sku_of(gid)
                if sku is None:
                    return dead(f"unknown inventory item {gid}")
                events = [mapping.level_event(self.name, channel, delivery, payload, sku,
                                              remote_location, available, now)]
        except mapping.MappingError as exc:
            return dead(f"{topic}: {exc}")
        return WebhookReply(200, events=events)

    async def _sku_of(self, gid: str) -> str | None:
        try:
            await asyncio.wait_for(self._lookup_skus([gid]),
                                   min(_LOOKUP_TIMEOUT, self.config.timeout))
        except (TransientPushError, PermanentPushError, TimeoutError) as exc:
            log.warning("cannot look up an inventory item: %s", exc,
                        extra={"connector": self.name})
        return self._skus.get(gid)
